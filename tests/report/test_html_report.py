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


def test_image_table_embeds_image_cells_and_marks_header_classes(tmp_path):
    rep = HtmlReport("t")
    img = np.full((3, 5, 1), 200, dtype=np.uint8)
    png = tmp_path / "x.png"
    from privdiff.report.images import save_png

    save_png(img, png)
    rep.section("s").image_table(
        [["a <b>", img, png, None, 0.5]],
        ["row", "array", "file", "none", "num"],
        header_classes=[None, "bad"],
        width=40,
    )
    doc = rep.render()
    assert '<th class="bad">array</th>' in doc and "<th>file</th>" in doc
    assert doc.count('<td class="img"><img alt="" src="data:image/png;base64,') == 2 and 'width="40"' in doc
    assert "a &lt;b&gt;" in doc and "<td>–</td>" in doc and '<td class="num">0.5</td>' in doc
