"""One comparison over scales from separately recorded ablations (scripts/combine_scales.py):
variants renamed to common labels, the others left out, every statistic as recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from support.cli import invoke_cli

from mousse.experiments.scale import relabel
from mousse.train.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TUNED = ROOT / "benchmarks" / "tuned"
SPEC = TUNED / "cpu-2core-decisive-scale.toml"
_spec = importlib.util.spec_from_file_location(
    "combine_scales", ROOT / "scripts" / "combine_scales.py"
)
assert _spec and _spec.loader
combine_scales = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(combine_scales)


def _recorded(name: str) -> dict:
    return json.loads((TUNED / name).read_text())


def test_relabel_keeps_the_named_variants_renamed_in_order_with_their_statistics():
    results = _recorded("cpu-2core-paper-tuned-momentum-tiny.json")
    names = {"muon": "Muon", "momentum_style=nesterov": "Nesterov", "mousse": "HB"}
    out = relabel(results, names)
    assert out["baseline"] == "Muon" and out["timing_pass"]["baseline"] == "Muon"
    assert [v["variant"] for v in out["variants"]] == ["Muon", "Nesterov", "HB"]
    before = {v["variant"]: v for v in results["variants"]}
    for old, new in names.items():
        (v,) = [v for v in out["variants"] if v["variant"] == new]
        assert {k: x for k, x in v.items() if k != "variant"} == {
            k: x for k, x in before[old].items() if k != "variant"
        }
        assert out["timing_pass"]["variants"][new] == results["timing_pass"]["variants"][old]
    assert {r["variant"] for r in out["runs"]} == {"Muon", "Nesterov", "HB"}
    kept = sum(r["variant"] in names for r in results["runs"])
    assert len(out["runs"]) == kept < len(results["runs"])
    assert all(set(row) <= {"Muon", "Nesterov", "HB"} for row in out["timing_pass"]["order"])


@pytest.mark.parametrize(
    "names, needle",
    [({"mousse": "Mousse"}, "baseline 'muon'"), ({"muon": "M", "adam": "A"}, "no variant 'adam'")],
)
def test_relabel_refuses_a_missing_baseline_or_an_unknown_variant(names, needle):
    with pytest.raises(ConfigError, match=needle):
        relabel(_recorded("cpu-2core-paper-tuned-momentum-tiny.json"), names)


def test_the_recorded_scales_combine_into_one_report_with_the_recorded_speedups(tmp_path):
    out = tmp_path / "scale.json"
    assert combine_scales.main([str(SPEC), str(out)]) == 0
    shown = invoke_cli("report", out, "--format", "json")
    assert shown.exit_code == 0
    rows = {(r["preset"], r["variant"]): r for r in shown.json()["scale"]["rows"]}
    small = {
        v["variant"]: v for v in _recorded("cpu-2core-paper-tuned-momentum-small.json")["variants"]
    }
    assert rows["small", "Mousse (Nesterov)"]["speedup"] == small["mousse"]["speedup"]
    assert (
        rows["small", "Mousse (heavy-ball)"]["p_value"]
        == small["momentum_style=heavy_ball"]["p_value"]
    )
    medium = {v["variant"]: v for v in _recorded("cpu-2core-decisive-medium.json")["variants"]}
    assert rows["medium", "Mousse (Nesterov)"]["speedup"] == medium["mousse"]["speedup"]
    assert all(rows[preset, "Muon"]["is_baseline"] for preset in ("tiny", "small", "medium"))
    table = invoke_cli("report", out)
    assert (
        table.exit_code == 0
        and "Mousse (Nesterov)" in table.stdout
        and "speedup by scale" in table.stdout
    )


def test_a_bad_spec_is_one_line_and_exit_2(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('[[point]]\npreset = "tiny"\nresults = "missing.json"\nvariants = {}\n')
    assert combine_scales.main([str(spec), str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0]
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "missing.json").write_text("{not json")  # damaged: one line too, no traceback
    assert combine_scales.main([str(spec), str(tmp_path / "o.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_several_presets_render_as_one_markdown_document_and_one_csv(tmp_path):
    """Markdown: each preset's tables under its heading, then the speedup by scale as markdown
    (no Rich table inside a markdown document); csv: one header, a preset column first."""
    out = tmp_path / "scale.json"
    assert combine_scales.main([str(SPEC), str(out)]) == 0
    md = invoke_cli("report", out, "--format", "markdown").stdout
    assert (
        md.index("# preset tiny")
        < md.index("# preset small")
        < md.index("# preset medium")
        < md.index("# Speedup by scale")
    )
    assert (
        "| Mousse (Nesterov) | 1.21x [0.90, 1.41] (not significant) | 1.25x [1.22, 1.28] "
        "| 1.06x [0.98, 1.15] (not significant) |"
    ) in md
    assert not any(ch in md for ch in "┏┃━")
    lines = invoke_cli("report", out, "--format", "csv").stdout.splitlines()
    assert (
        lines[0].startswith("preset,variant,")
        and sum(line.startswith("preset,") for line in lines) == 1
    )
    assert [line.split(",")[0] for line in lines[1:]] == ["tiny"] * 3 + ["small"] * 3 + [
        "medium"
    ] * 3


def test_every_recorded_scale_file_has_its_typed_form():
    """Joined scales (`combine`, as `mousse ablate --preset a,b --json` prints) and scale
    summaries alone (scale.json), every one benchmarks/ records."""
    from mousse.experiments.scale import ScaledResults, ScaleSummary
    from mousse.train.fileio import shaped

    kinds = {"joined": 0, "summary": 0}
    for path in sorted((ROOT / "benchmarks").glob("**/*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "scale" in data:
            assert shaped(data, ScaledResults), path
            kinds["joined"] += 1
        elif isinstance(data, dict) and "rows" in data and "presets" in data:
            assert shaped(data, ScaleSummary), path
            kinds["summary"] += 1
    assert min(kinds.values()) >= 1, kinds
