import base64
import re

import numpy as np

from privdiff.report.html import HtmlReport


def test_report_embeds_images_escapes_text_and_formats_numbers(tmp_path):
    rep = HtmlReport("privdiff <demo>", subtitle="a & b")
    s = rep.section("DP-RDM")
    s.text("ε spent: `0.5` <script>")
    s.table([["paper", 0.99688, 25], ["pld", float("inf"), None]], headers=["accountant", "ε", "order"])
    img = np.zeros((4, 4, 1), dtype=np.uint8)
    s.image(img, caption="grid", scale=2)
    out = rep.write(tmp_path / "r.html")
    doc = out.read_text()
    assert "<script>" not in doc and "&lt;script&gt;" in doc
    assert "privdiff &lt;demo&gt;" in doc and "<code>0.5</code>" in doc
    assert "0.9969" in doc and "∞" in doc and "–" in doc
    m = re.search(r'src="data:image/png;base64,([^"]+)"', doc)
    assert m and base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "r.html.tmp").exists()
