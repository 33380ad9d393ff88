-- Orthanc: send every new ultrasound instance to busi-node (modality "busi" in orthanc.json).
-- busi-node stores its results (SR, overlay, SEG) back into Orthanc; those are not ultrasound,
-- so they are not routed again.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags["Modality"] == "US" and origin["RequestOrigin"] ~= "Lua" then
    SendToModality(instanceId, "busi")
  end
end
