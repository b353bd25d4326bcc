import matplotlib

matplotlib.use("Agg")

from nbdiffuse.viz import explain_prompt  # noqa: E402


def test_explanation_shows_parts_schedule_chunks_and_weights():
    ex = explain_prompt("a [red:blue:0.5] ball, (shiny:1.3) <lora:x:0.5> AND a tree :0.8", steps=20)
    assert [p.weight for p in ex.parts] == [1.0, 0.8]
    first = ex.parts[0].schedule
    assert [(e.start, e.end) for e in first] == [(1, 10), (11, 20)]
    assert first[0].text.startswith("a red ball") and first[1].text.startswith("a blue ball")
    rows = ex.token_rows(first[0].chunks[0])
    assert ("shiny ", 1.3) in [(t, w) for _, t, w in rows]
    assert [n.name for n in ex.networks] == ["x"]
    html = ex._repr_html_()
    assert "AND part 2" in html and "steps 11–20" in html and "shiny" in html and "&lt;lora:x:0.5&gt;" in html


def test_counter_matches_a1111_and_break_makes_two_chunks():
    ex = explain_prompt("a BREAK b", steps=10)
    assert ex.counter == "76/150" and len(ex.parts[0].schedule[0].chunks) == 2


def test_timeline_figure_has_one_bar_per_scheduled_text():
    ex = explain_prompt("[a|b|c] x", steps=6)
    fig = ex.timeline()
    assert len(fig.axes[0].patches) == 6
