"""busi-node: a DICOM node beside the PACS (pynetdicom). Receives ultrasound images (C-STORE),
spools them, classifies them with the runtime's Predictor and stores the SR, overlay and SEG
back to a destination. No TensorFlow: it needs the runtime and the `node` extra only."""
