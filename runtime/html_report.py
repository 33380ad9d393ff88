"""A self-contained HTML case report: one row per case, images inline, no scripts.

Each row: the image with what the classifier saw (green) and the lesion that was given or
found (yellow), the Grad-CAM overlay of the predicted class, the class probabilities as
bars, and the malignant flag at the operating point. Images where `--mask auto` abstained get
their own section (the image, the region the segmenter found, the reason); failed files are
listed with their one-line error. Written atomically.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_text
from .gradcam import GREEN, YELLOW, marked, overlay
from .results import FAILURE, NEEDS_ROI

#: the marker in every report's head, so a folder walk counts it as busi's own output
GENERATOR = "busi "
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} .sub{color:#555;margin:0 0 16px}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:8px 12px;margin:0 0 16px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:8px;vertical-align:top;text-align:left}
th{background:#f6f6f6} img{max-width:260px;display:block} .path{font-family:monospace;word-break:break-all;max-width:260px}
.bar{display:flex;align-items:center;gap:6px;margin:2px 0} .bar span.l{width:70px}
.bar .t{background:#eee;width:160px;height:12px;position:relative}
.bar .f{background:#4a78c2;height:12px} .bar .f.malignant{background:#c24a4a}
.flag{font-weight:600;color:#b00} .ok{color:#2a7a2a} .note{color:#666;font-size:12px}
.fail td{background:#fff0f0} .roi td{background:#fffbe6}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
"""


def _img_tag(rgb: np.ndarray, alt: str) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,{base64.b64encode(buf.tobytes()).decode()}">'


class HtmlReport:
    """Collect cases as they are predicted; `write()` puts the page at `path` atomically."""

    def __init__(self, path: str | Path, model_path: str, info, threshold: float, provider: str):
        self.path = Path(path)
        self.model_path, self.info, self.threshold, self.provider = str(model_path), info, threshold, provider
        self.rows: list[str] = []
        self.failures: list[str] = []
        self.abstained: list[str] = []
        self.n_ok = 0
        self.n_ood = 0

    def add(self, result) -> None:
        d = result.to_dict()
        if result.kind == FAILURE:
            self.failures.append(
                f'<tr class="fail"><td class="path">{html.escape(str(d["path"]))}</td><td>{html.escape(d["error"])}</td></tr>'
            )
            return
        if result.kind == NEEDS_ROI:
            view = result.extras.get("view")
            pic = "" if view is None else _img_tag(marked(view, None, result.extras.get("lesion")),
                                                   "image with the region the segmenter found")
            box = f"<br>region found: box {html.escape(' '.join(map(str, d['lesion_box'])))}" if d.get("lesion_box") else ""
            self.abstained.append(
                f'<tr class="roi"><td class="path">{html.escape(str(d["path"]))}</td><td>{pic}</td>'
                f'<td><b>not classified</b>: {html.escape(d["reason"])}<br>lesion presence {d["lesion_presence"]:.3g} '
                f'(no lesion below {d["presence_band"][0]:.3g}, a lesion from {d["presence_band"][1]:.3g}){box}'
                f'<br>give a box (<code>--roi x,y,w,h</code>) or a mask</td></tr>')
            return
        self.n_ok += 1
        ex = result.extras
        view = ex.get("view")
        pics = ["", ""]
        if view is not None:
            pics[0] = _img_tag(marked(view, ex["mask"], ex.get("lesion")), "image with mask")
            if ex.get("cam") is not None:
                pics[1] = _img_tag(overlay(view, ex["cam"]), f"Grad-CAM of {d['class']}")
        bars = "".join(
            f'<div class="bar"><span class="l">{html.escape(c)}</span><div class="t"><div class="f {html.escape(c)}" '
            f'style="width:{100 * p:.1f}%"></div></div><span>{p:.3f}</span></div>'
            for c, p in d["probabilities"].items()
        )
        flag = (f'<span class="flag">MALIGNANT flag</span> (P(malignant) {d["probabilities"]["malignant"]:.3f} &ge; {d["threshold"]:.3f})'
                if d["malignant"] else
                f'<span class="ok">not flagged</span> (P(malignant) {d["probabilities"]["malignant"]:.3f} &lt; {d["threshold"]:.3f})')
        mask = html.escape(d["mask_source"])
        if d.get("lesion_found") is False:
            mask += " (no lesion found)"
        box = f"<br>lesion box {html.escape(' '.join(map(str, d['lesion_box'])))}" if d.get("lesion_box") else ""
        notes = "".join(f'<div class="note">{html.escape(n)}</div>' for n in d.get("notes", []))
        lk = d.get("likelihood")
        if lk:
            box += (f"<br>likelihood band <b>{html.escape(lk['band'])}</b> ({html.escape(lk['range'])}), aligned with "
                    f"BI-RADS, not an assessment; prevalence: {html.escape(lk['prevalence'])}")
        if d.get("prediction_set") is not None:
            box += (f"<br>{d['coverage']:.0%} prediction set: "
                    f"{html.escape(', '.join(d['prediction_set']) or 'empty (no class is plausible enough)')}")
        self.n_ood += bool(d.get("out_of_distribution"))
        if d.get("out_of_distribution") is not None:
            box += (f"<br><span class=\"flag\">OUT OF DISTRIBUTION</span> (score {d['ood_score']:.3g} &gt; "
                    f"{d['ood_threshold']:.3g})" if d["out_of_distribution"] else
                    f"<br>like the training images (out-of-distribution score {d['ood_score']:.3g} &le; {d['ood_threshold']:.3g})")
        self.rows.append(
            f'<tr class="case"><td class="path">{html.escape(str(d["path"]))}</td><td>{pics[0]}</td><td>{pics[1]}</td>'
            f'<td><b>{html.escape(d["class"])}</b> ({d["confidence"]:.3f}){bars}</td>'
            f'<td>{flag}<br>mask: {mask}{box}{notes}</td></tr>'
        )

    def html(self) -> str:
        from busi import __version__

        info = self.info
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        metrics = info.metrics.get(info.mask.source, {})
        held = ""
        if metrics:
            held = (f" Held-out figures of this model ({info.mask.source} masks, n={metrics.get('n')}): accuracy "
                    f"{metrics.get('accuracy', float('nan')):.3f}, malignant sensitivity {metrics.get('malignant_sensitivity') or float('nan'):.3f}.")
        roi = ""
        if self.abstained:
            roi = ("<h2>Not classified: an ROI is needed</h2><p class=\"sub\">With <code>--mask auto</code> the segmenter was unsure "
                   "whether there is a lesion, or what it found is not a plausible lesion; a guessed box is not classified.</p>"
                   "<table><tr><th>file</th><th>image (yellow: region found)</th><th>why</th></tr>" + "".join(self.abstained) + "</table>")
        fails = ""
        if self.failures:
            fails = ("<h2>Failed files</h2><table><tr><th>file</th><th>error</th></tr>" + "".join(self.failures) + "</table>")
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}{__version__}"><title>busi case report</title><style>{CSS}</style></head>
<body>
<h1>busi case report</h1>
<p class="sub">{self.n_ok} case(s) classified{f" ({self.n_ood} flagged out of distribution: do not trust their class)" if self.n_ood else ""}, {f"{len(self.abstained)} need an ROI, " if self.abstained else ""}{len(self.failures)} failed &middot; model <code>{html.escape(self.model_path)}</code>
&middot; trained mask source <b>{html.escape(info.mask.source)}</b> &middot; malignant flag at P(malignant) &ge; {self.threshold:.3f}
&middot; {html.escape(self.provider.replace("ExecutionProvider", ""))} &middot; {when}</p>
<p class="warn"><b>Research software, not a medical device.</b> These outputs are not a diagnosis and must not guide the
care of a patient.{html.escape(held)}</p>
<p class="legend">Outlines:<span style="background:rgb{GREEN}"></span>what the classifier saw
<span style="background:rgb{YELLOW}"></span>lesion given or found. Heat map: Grad-CAM of the predicted class.</p>
<table><tr><th>file</th><th>image</th><th>Grad-CAM</th><th>probabilities</th><th>result</th></tr>
{"".join(self.rows)}
</table>
{roi}
{fails}
</body></html>
"""

    def write(self, final: Path | None = None) -> None:
        """Atomically to `final` (where a checked --report target lands) or the report path."""
        atomic_write_text(final or self.path, self.html())
