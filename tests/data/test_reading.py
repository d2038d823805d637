import json

import datasets
import pytest

from mtbert.config import TaskConfig
from mtbert.data.reading import read_split
from mtbert.errors import MtbertError
from mtbert.tasks import resolve_task


def task(name, **fields):
    return resolve_task(name, TaskConfig(**fields))


def test_cs224n_sst_reads_with_quoting(tmp_path):
    folder = tmp_path / "cs224n"
    folder.mkdir()
    (folder / "ids-sst-train.csv").write_text(
        '\tid\tsentence\tsentiment\n0\ta1\t"a ""quoted"" word\tand a tab"\t3\n1\ta2\t plain \t0\n')
    data = read_split(task("sst"), "train", tmp_path)
    assert data.dataset["text_a"] == ['a "quoted" word\tand a tab', "plain"]
    assert data.dataset["label"] == [3, 0] and data.dataset["id"] == ["a1", "a2"]


def test_quora_malformed_rows_reported_and_skipped(tmp_path):
    folder = tmp_path / "cs224n"
    folder.mkdir()
    (folder / "quora-dev.csv").write_text(
        "\tid\tsentence1\tsentence2\tis_duplicate\n"
        "0\tq0\tone?\ttwo?\t1.0\n"
        "1\tq1\tthree?\t\"four\n?\"\t\n"      # no label; the quoted field spans two lines
        "2\tq2\tfive?\tsix?\t0.0\n"
        "3\tq3\tseven?\n")                    # short row: no second sentence
    data = read_split(task("quora"), "dev", tmp_path)
    assert data.dataset["label"] == [1, 0]
    assert data.skipped_lines == [3, 6]
    report = data.skip_report()
    assert "skipped 2 malformed row(s)" in report and "line(s) 3, 6" in report and "quora-dev.csv" in report


def test_label_out_of_range_names_file_and_line(tmp_path):
    folder = tmp_path / "cs224n"
    folder.mkdir()
    (folder / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tok\t1\n1\tb\tbad\t7\n")
    with pytest.raises(MtbertError, match=r"ids-sst-train.csv:3: label '7' of task sst is out of range 0..4"):
        read_split(task("sst"), "train", tmp_path)


def test_regression_score_outside_range(tmp_path):
    folder = tmp_path / "cs224n"
    folder.mkdir()
    (folder / "sts-train.csv").write_text("\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t5.5\n")
    with pytest.raises(MtbertError, match=r"sts-train.csv:2: score 5.5 .* outside \[0.0, 5.0\]"):
        read_split(task("sts"), "train", tmp_path)


def test_glue_tsv_has_no_quoting(tmp_path):
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tscore\n"
                                      '0\tHe said "hi\tand left\t1.0\n1\tshe "waved"\tok\t2.5\n')
    data = read_split(task("stsb"), "train", tmp_path)
    assert len(data.dataset) == 2  # with CSV quoting the two rows would merge
    assert data.dataset["text_a"] == ['He said "hi', 'she "waved"']


def test_cola_headerless_and_mrpc_bom(tmp_path):
    cola = tmp_path / "glue" / "CoLA"
    cola.mkdir(parents=True)
    (cola / "train.tsv").write_text("gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    (cola / "test.tsv").write_text("index\tsentence\n0\tA test sentence.\n")
    data = read_split(task("cola"), "train", tmp_path)
    assert data.dataset["label"] == [1, 0] and data.dataset["text_a"][0] == "Our friends won't buy this."
    test = read_split(task("cola"), "test", tmp_path)
    assert not test.labelled and test.dataset["text_a"] == ["A test sentence."]
    mrpc = tmp_path / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    (mrpc / "dev.tsv").write_bytes("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA c.\n"
                                   .encode("utf-8"))
    data = read_split(task("mrpc"), "dev", tmp_path)
    assert data.dataset["label"] == [1] and data.dataset["text_b"] == ["A c."]


def test_label_names_map_text_labels(tmp_path):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n"
                                    "0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n")
    assert read_split(task("rte"), "dev", tmp_path).dataset["label"] == [1, 0]
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(MtbertError, match=r"dev.tsv:2: label 'maybe' of task rte is not one of"):
        read_split(task("rte"), "dev", tmp_path)


def test_missing_column_file_and_empty_split(tmp_path):
    folder = tmp_path / "cs224n"
    folder.mkdir()
    (folder / "ids-sst-train.csv").write_text("\tid\ttext\tsentiment\n0\ta\tok\t1\n")
    with pytest.raises(MtbertError, match=r"needs text column\(s\) 'sentence'; the file has"):
        read_split(task("sst"), "train", tmp_path)
    with pytest.raises(MtbertError, match=r"ids-sst-dev.csv: dev file of task sst not found"):
        read_split(task("sst"), "dev", tmp_path)
    (folder / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n")
    with pytest.raises(MtbertError, match="has no examples"):
        read_split(task("sst"), "train", tmp_path)
    (folder / "ids-sst-train.csv").write_text("\tid\tsentence\n0\ta\tok\n")
    with pytest.raises(MtbertError, match="no label column 'sentiment'"):
        read_split(task("sst"), "train", tmp_path)


def test_custom_jsonl_and_csv(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"q": "is it?", "c": "yes", "y": "b"}) + "\n\n"
                                      + json.dumps({"q": "and?", "c": "no", "y": 0}) + "\n")
    custom = task("mine", format="jsonl", train_file="t.jsonl", dev_file="t.jsonl", text_columns=["q", "c"],
                  label_column="y", kind="classes", label_names=["a", "b"])
    data = read_split(custom, "train", tmp_path)
    assert data.dataset["label"] == [1, 0] and data.dataset["text_b"] == ["yes", "no"]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(MtbertError, match=r"bad.jsonl:1: not valid JSON"):
        read_split(task("x", format="jsonl", train_file="bad.jsonl", text_columns=["q"], label_column="y",
                        kind="binary"), "train", tmp_path)
    (tmp_path / "t.csv").write_text('text,score\n"a, b",1.5\nc,2\n')
    reg = task("r", format="csv", train_file="t.csv", text_columns=["text"], label_column="score", kind="regression")
    assert read_split(reg, "train", tmp_path).dataset["label"] == [1.5, 2.0]


def test_glue_falls_back_to_the_hub_when_no_local_folder(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = read_split(task("sst2"), "dev", tmp_path)
    assert calls == [("glue", "sst2", "validation")]
    assert data.dataset["label"] == [1, 0] and data.source == "hub:glue/sst2[validation]"
    # A local folder takes precedence, and a file missing from it is an error, not a download.
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    with pytest.raises(MtbertError, match="not found"):
        read_split(task("sst2"), "dev", tmp_path)


def test_hub_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nlong trace")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MtbertError, match=r"task mnli: no local folder, and the hub dataset glue/mnli "
                                          r"\(validation_matched\) could not be loaded: Couldn't reach the hub$"):
        read_split(task("mnli"), "dev", tmp_path)
