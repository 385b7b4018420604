"""attnlab.present, the one page style: number formats, tables and pages, and the plot fixes (plain tick
labels without offset, integer layer ticks, points with interval bars, no empty plots), plus the study
pages and the compare table built on it. Everything here draws tiny figures; no model runs."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from attnlab.present import (
    Raw,
    figure_html,
    fmt_interval,
    fmt_num,
    label,
    page,
    table,
)
from attnlab.present.plots import (
    figure,
    has_data,
    log_axis,
    plot_layers,
    plot_points,
    png_data_uri,
    reference,
    save_png,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _labels(ax, axis: str = "y") -> list[str]:
    ax.figure.canvas.draw()
    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    return [t.get_text() for t in target.get_ticklabels() if lo <= t.get_position()[axis == "y"] <= hi]


# -- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x, want", [
    (None, "–"), (float("nan"), "–"), (float("inf"), "inf"), (True, "True"), (0.0, "0"), (1.58432, "1.58"),
    (0.012345, "0.0123"), (123.456, "123"), (999.96, "1,000"), (12345.6, "12,346"), (25500, "25,500"),
    (123456.0, "1.23e+05"), (1e-5, "1.00e-05"), (-0.0004, "-4.00e-04"), (-1e-12 + 1e-12, "0"),
])
def test_fmt_num(x, want):
    assert fmt_num(x) == want


def test_fmt_num_digits_and_text():
    assert fmt_num(3.45678, digits=4) == "3.457"
    assert fmt_num("softmax") == "softmax"


def test_fmt_interval_resolves_a_narrow_interval():
    # At three significant digits all three would print as 1.00; the width decides the decimals.
    assert fmt_interval(0.99995, 0.9999, 1.0) == "0.99995 [0.99990, 1.00000]"
    assert fmt_interval(1.5843, 1.5712, 1.6001) == "1.584 [1.571, 1.600]"
    assert fmt_interval(2e-6, 1.99e-6, 2.01e-6) == "2.000e-06 [1.990e-06, 2.010e-06]"
    assert fmt_interval(1.5, None, 2.0) == "1.50"  # no interval: the value alone


# -- HTML ---------------------------------------------------------------------------------------------------


def test_table_escapes_text_aligns_numbers_and_groups_rows():
    out = table(["Group <1>", ["a<b", 1.23456, None, Raw("<b>x</b>"), "1.5 ± 0.2", "... text"]],
                ["name", "v", "none", "raw", "stat", "words"])
    assert "a&lt;b" in out and "Group &lt;1&gt;" in out and "<b>x</b>" in out
    assert "<th class='group' colspan='6'>" in out
    assert "<td class='num'>1.23</td>" in out and "<td class='num'>–</td>" in out
    assert "<td class='num'>1.5 ± 0.2</td>" in out and "<td>... text</td>" in out


def test_page_is_self_contained():
    html = page("t <x>", [table([[1]], ["a"]), figure_html("data:image/png;base64,AAAA", "cap", title="T")],
                lead=["line"])
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "t &lt;x&gt;" in html
    assert "<script" not in html and not re.search(r"(src|href)=[\"']?(https?:|//)", html)


def test_figure_without_data_says_so_and_keeps_its_caption():
    out = figure_html(None, "what it shows", title="T")
    assert "Not drawn: no finite values" in out and "what it shows" in out and "<img" not in out


def test_labels_map_raw_keys():
    assert label("val_loss") == "validation loss (nats/byte)"
    assert label("some_new_key") == "some_new_key"


def test_present_imports_no_higher_floor_and_no_matplotlib_until_plotting():
    # `import attnlab` loads the public API (attention, models); present must add nothing of attnlab but
    # itself and attnlab.io, and no matplotlib for numbers and tables.
    code = ("import sys, attnlab; before = set(sys.modules); import attnlab.present as p; p.fmt_num(1.0); "
            "p.table([[1]], ['a']); new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.startswith('attnlab') and not m.startswith('attnlab.present') "
            "and m != 'attnlab.io'), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"


# -- plots --------------------------------------------------------------------------------------------------


def test_ticks_near_one_have_no_offset():
    # Matplotlib's default labels these ticks "0.0 ... 1.0" with an offset text "+9.999e-1" at the axis end.
    fig, ax = figure()
    ax.plot([0, 1, 2], [0.99991, 0.99995, 0.99999], "o")
    labels = _labels(ax)
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert len(set(labels)) == len(labels) >= 3
    assert all(abs(float(t.replace(",", "")) - 0.9999) < 2e-4 for t in labels)


def test_tiny_values_have_no_shared_multiplier():
    fig, ax = figure()
    ax.plot([0, 1], [1e-7, 5e-7], "o")
    labels = _labels(ax)
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert all(t == "0" or "e-0" in t for t in labels), labels


def test_plot_layers_integer_ticks_and_interval_bars():
    fig, ax = figure()
    n = plot_layers(ax, {"a": ([1.0, 2.0, 1.5], [0.9, 1.8, 1.4], [1.1, 2.2, 1.6]),
                         "b": ([1.2, None, 1.7], None, None)})
    assert n == 2
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == 1 and len(bars[0].get_segments()) == 3  # one bar per point of series a
    assert ax.get_xlabel() == "layer"


def test_points_do_not_start_at_zero():
    # Bars from zero made 1.57 vs 1.60 look identical; points scale the axis to the values.
    fig, ax = figure()
    drawn = plot_points(ax, ["x", "y", "z"], [1.577, 1.600, None], [1.572, 1.596, None], [1.582, 1.603, None])
    assert drawn == 2
    lo, hi = ax.get_ylim()
    assert lo > 1.5 and hi < 1.7
    assert "n/a" in [t.get_text() for t in ax.texts]


def test_has_data_ignores_reference_lines_and_nan():
    fig, ax = figure()
    ax.plot([0, 1], [math.nan, math.nan])
    reference(ax, 1.0)
    assert not has_data(fig)
    ax.plot([0], [2.0], "o")
    assert has_data(fig)


def test_log_axis_plain_labels_and_linear_without_positive_data():
    fig, ax = figure()
    ax.plot([1, 2, 3], [0.01, 1.0, 300.0])
    assert log_axis(ax)
    labels = _labels(ax)
    assert "$" not in "".join(labels) and "1" in labels and "100" in labels
    fig, ax = figure()
    ax.plot([1, 2], [0.0, -1.0])
    assert not log_axis(ax) and ax.get_yscale() == "linear"
    fig, ax = figure()
    ax.plot([16, 1024, 4096], [1, 2, 3])
    log_axis(ax, "x", 2)
    assert "1,024" in _labels(ax, "x")  # exact powers of two, not 1,020


def test_png_saved_atomically_and_inlined(tmp_path):
    fig, ax = figure()
    ax.plot([0, 1], [0, 1])
    path = save_png(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == PNG and not list(path.parent.glob("*.tmp"))
    uri = png_data_uri(path)
    assert uri.startswith("data:image/png;base64,") and uri == png_data_uri(fig)


# -- study pages and the compare table ----------------------------------------------------------------------


def test_line_and_point_plots_skip_empty_data_and_remove_a_stale_png(tmp_path):
    from attnlab.experiments.html import bar_plot, line_plot

    stale = tmp_path / "x.png"
    stale.write_bytes(PNG)
    assert line_plot(stale, {"a": ([0, 1], [None, math.nan], None)}, xlabel="layer", ylabel="y",
                     title="t") is None
    assert not stale.exists()
    assert bar_plot(tmp_path / "b.png", ["a"], [None], None, ylabel="val_loss", title="t") is None
    assert line_plot(tmp_path / "ok.png", {"a": ([0, 1], [1.0, 2.0], [0.1, 0.2])}, xlabel="layer",
                     ylabel="val_loss", title="t").read_bytes()[:8] == PNG


def _doc(figures: list[dict[str, str]]) -> dict:
    return {"study": "fake", "summary": "s", "command": "attnlab run fake --out x", "seeds": [0],
            "provenance": {"versions": {"attnlab": "0", "torch": "0"}}, "timings": {"total": 1.0},
            "claims": [], "verdict_rule": "r", "tables": [{"title": "T", "columns": ["a", "b"],
                                                            "rows": [["x", "1.5 ± 0.1"]]}],
            "figures": figures, "config": {"k": 1}}


def test_study_page_notes_a_plot_that_was_not_drawn(tmp_path):
    from attnlab.experiments.html import study_page

    (tmp_path / "drawn.png").write_bytes(PNG)
    figs = [{"file": "drawn.png", "caption": "one"}, {"file": "skipped.png", "caption": "two"}]
    html = study_page(_doc(figs), tmp_path).read_text()
    assert html.count("data:image/png;base64,") == 1
    assert "Not drawn: no finite values" in html and "two" in html and "1.5 ± 0.1" in html


def test_markdown_notes_a_plot_that_was_not_drawn(tmp_path):
    from attnlab.experiments.markdown import study_markdown

    (tmp_path / "drawn.png").write_bytes(PNG)
    doc = _doc([{"file": "drawn.png", "caption": "one"}, {"file": "skipped.png", "caption": "two"}])
    doc["timings"] = {"total": 60.0}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    md = study_markdown(tmp_path)
    assert f"![one]({(tmp_path / 'drawn.png').as_posix()})" in md
    assert "skipped.png" in md and "![two]" not in md


def test_variants_table_bolds_a_unique_best_and_keeps_every_statistic():
    from attnlab.experiments.compare_page import variants_table

    st = lambda m: {"mean": m, "std": 0.0, "n": 2}  # noqa: E731
    out = variants_table({"a": {"val_loss": st(1.5), "sink_rate": st(0.0), "extra": st(7.0), "curve": [1]},
                          "b": {"val_loss": st(1.6), "sink_rate": st(0.0), "extra": st(8.0)}})
    assert out.count("<b>") == 1 and "<b>1.5 ± 0</b>" in out  # a tie (sink rate 0 = 0) has no best
    assert "validation loss (nats/byte)" in out and "Other" in out and "extra" in out and "curve" not in out


def test_compare_page_does_not_import_the_study(tmp_path):
    # compare_page used to import offbyone (for its labels) while offbyone imports compare_page: a circle.
    doc = _doc([])
    doc.update(config={"n_layers": 2, "d_model": 8, "n_heads": 2, "context": 16, "steps": 1, "batch_size": 1},
               answer="a", results={"variants": {"softmax": {"val_loss": {"mean": 1.0, "std": 0.0, "n": 1}}}})
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    code = ("import json, sys; from attnlab.experiments.compare_page import compare_page; "
            f"p = compare_page(json.load(open({str(tmp_path / 'doc.json')!r})), {str(tmp_path)!r}); "
            "print('attnlab.experiments.offbyone' in sys.modules, p.exists())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False True"
    assert "validation loss (nats/byte)" in (tmp_path / "compare.html").read_text()
