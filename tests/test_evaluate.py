"""The evaluation harness (training/evaluate.py) end to end, quick, on the tiny random model.

The model writes gibberish, so only the shape and the reproducibility of the report are checked;
the metric functions themselves are tested in test_metrics.py.
"""

import json

import pytest

from training import evaluate

# A few prompts and short stories keep this under a minute on a loaded 2-core CPU.
QUICK = ["--quick", "--limit", "4", "--set", "max_new_tokens=24", "--batch-size", "4"]
METRICS = ["name_use", "name_use_beyond_opener", "relevance", "relevance_matched",
           "relevance_shuffled", "relevance_after_first", "relevance_after_first_matched",
           "relevance_after_first_shuffled", "preamble", "encyclopedic", "repetition_3gram",
           "distinct_1", "distinct_2", "complete_sentence", "mean_words", "near_empty"]
# None where the gibberish stories have fewer than two sentences, so only their presence is checked.
COHERENCE = ["coherence", "coherence_consecutive", "coherence_other"]


def test_prompts_file():
    prompts = evaluate.load_prompts()
    assert len(prompts) >= 100
    assert len({p.name for p in prompts}) == len(prompts)
    categories = {p.category for p in prompts}
    assert categories == {"fantasy", "myth", "scifi", "creature", "faction", "npc"}
    assert all(p.name and p.description for p in prompts)
    assert "CC0" in evaluate.PROMPTS.read_text().splitlines()[0]


def test_parse_overrides():
    assert evaluate.parse_overrides(["temperature=0.7", "opener=false,top_k=0"]) == {
        "temperature": "0.7", "opener": "false", "top_k": "0"}
    for bad in (["temperature"], ["no_such_setting=1"]):
        with pytest.raises(ValueError):
            evaluate.parse_overrides(bad)
    with pytest.raises(ValueError):
        evaluate.make_settings("m", {"temperature": "hot"})


def test_quick_run_writes_reports_and_is_reproducible(tiny_model, tmp_path):
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        evaluate.held_out.cache_clear()  # load the held-out data again, too
        assert evaluate.main(["--model", str(tiny_model), "--out-dir", str(out), *QUICK]) == 0
        runs.append(json.loads((out / "eval.json").read_text()))
    first, second = runs
    assert first == second  # same seeds, same numbers (and the same stories)
    assert first["settings"]["max_new_tokens"] == 24
    assert first["prompts"] == 4 and len(first["samples"]) == 4
    assert [s["seed"] for s in first["samples"]] == [1000, 1001, 1002, 1003]
    assert first["perplexity"]["perplexity"] > 1 and first["perplexity"]["block_size"] == 512
    for metric in METRICS:
        assert isinstance(first["backstories"][metric], float), metric
    for metric in ("repetition_3gram", "distinct_1", "distinct_2", "complete_sentence",
                   "mean_words", "near_empty", "preamble"):
        assert first["reference"][metric] is not None, metric
    for part in ("backstories", "reference"):
        for metric in ("relevance_after_first", "preamble", *COHERENCE):
            assert metric in first[part], (part, metric)
    assert first["backstories"]["preamble"] == 0.0  # the opener starts every story on the name
    report = (tmp_path / "a" / "eval.md").read_text()
    for metric in METRICS + COHERENCE:
        assert f"| {metric} |" in report


def test_compare_writes_one_row_per_variant(tiny_model, tmp_path):
    argv = ["--model", str(tiny_model), "--out-dir", str(tmp_path), *QUICK,
            "--compare", "opener=true", "opener=false,temperature=0.7"]
    assert evaluate.main(argv) == 0
    results = json.loads((tmp_path / "compare.json").read_text())
    assert list(results) == ["opener=true", "opener=false,temperature=0.7"]
    assert results["opener=false,temperature=0.7"]["settings"]["opener"] is False
    assert results["opener=true"]["perplexity"] == results["opener=false,temperature=0.7"][
        "perplexity"]  # computed once
    table = (tmp_path / "compare.md").read_text()
    assert "| opener=true |" in table and "| opener=false,temperature=0.7 |" in table
    assert "| human reference |" in table
    assert "| variant | " + " | ".join(evaluate.COLUMNS) + " |" in table
    assert evaluate.compare_markdown(list(results.items())) == table


def test_comparison_table_rows_and_reference():
    def result(name_use, reference_name_use):
        return {"backstories": {"name_use": name_use, "coherence": None},
                "reference": {"name_use": reference_name_use}}

    table = evaluate.comparison_table([("zero-shot base", result(0.5, 0.9)),
                                       ("fine-tuned", result(1.0, 0.8))])
    lines = table.splitlines()
    assert lines[0] == "| run | " + " | ".join(evaluate.COLUMNS) + " |"
    assert lines[1] == "|---" * (len(evaluate.COLUMNS) + 1) + "|"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| zero-shot base", "| fine-tuned", "| human reference"]
    assert lines[2].startswith("| zero-shot base | 0.500 | - |")
    assert lines[4].startswith("| human reference | 0.900 | - |")  # the first result's reference


def test_bad_setting_is_an_error(tiny_model, tmp_path, capsys):
    assert evaluate.main(["--model", str(tiny_model), "--set", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


def test_card_evaluation_section_is_replaced_not_appended():
    from training.card import EVALUATION, with_evaluation

    report = "# Variants compared\n\n| variant |\n\n## Samples\n\n### Kay (seed 1)\n\n- **a**: x\n"
    once = with_evaluation("# Card\n\ntext\n", report)
    assert once.count(EVALUATION) == 1 and "### Samples" in once and "#### Kay" in once
    assert with_evaluation(once, report.replace(": x", ": y")).count(EVALUATION) == 1
    assert ": y" in with_evaluation(once, report.replace(": x", ": y"))
