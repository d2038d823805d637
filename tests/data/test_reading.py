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


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MOOD = dict(format="tsv", train_file="m.tsv", text_columns=["text"], label_column="label", kind="binary",
            label_names=["neg", "pos"])


def mood_file(*rows):
    return "text\tlabel\n" + "".join(r + "\n" for r in rows)


OK_ROWS = ["the film\tpos", "a dull plot\tneg", "what a story\tpos"]


@pytest.mark.parametrize(("fmt", "text", "line", "problem"), [
    ("tsv", mood_file(OK_ROWS[0], '"a dull plot\tneg', *OK_ROWS), 3, "never closed"),
    ("csv", 'text,label\nthe film,pos\n"a dull, plot,neg\nfine,pos\n', 3, "never closed"),
    ("tsv", mood_file(OK_ROWS[0], '"a dull plot\tneg', OK_ROWS[1], 'the end"\tpos'), 3, "look like rows"),
    ("tsv", mood_file(OK_ROWS[0], OK_ROWS[1], '"a" plot\tneg'), 4, "text after a closing quote"),
])
def test_quoting_damage_is_an_error_naming_the_line(tmp_path, fmt, text, line, problem):
    write(tmp_path, "m.tsv", text)
    with pytest.raises(MtbertError, match=rf"m.tsv:{line}: .*{problem}"):
        read_split(task("mood", **{**MOOD, "format": fmt}), "train", tmp_path)


def test_a_quoted_field_may_span_lines_that_are_not_rows(tmp_path):
    write(tmp_path, "m.tsv", mood_file(OK_ROWS[0], '"a dull\nplot, really"\tneg', OK_ROWS[2]))
    data = read_split(task("mood", **MOOD), "train", tmp_path)
    assert data.dataset["text_a"] == ["the film", "a dull\nplot, really", "what a story"]
    assert data.lines.tolist() == [2, 3, 5] and data.dataset["label"] == [1, 0, 1]


def test_a_row_with_more_fields_than_the_header(tmp_path):
    glue = {**MOOD, "format": "glue"}
    write(tmp_path, "m.tsv", mood_file(OK_ROWS[0], "a dull\tplot\tneg"))
    with pytest.raises(MtbertError, match=r"m.tsv:3: 3 fields, but the header has 2 \(a tab inside unquoted text"):
        read_split(task("mood", **glue), "train", tmp_path)
    write(tmp_path, "m.tsv", mood_file("the film\tpos\t", "a dull plot\tneg\t\t"))  # trailing empty fields
    assert read_split(task("mood", **glue), "train", tmp_path).dataset["label"] == [1, 0]


def test_a_column_the_task_reads_twice_in_the_header(tmp_path):
    write(tmp_path, "m.tsv", "text\tlabel\ttext\nthe film\tpos\ta film\n")
    with pytest.raises(MtbertError, match=r"m.tsv:1: column 'text' appears 2 times in the header"):
        read_split(task("mood", **MOOD), "train", tmp_path)
    write(tmp_path, "m.tsv", "text\tlabel\tnote\tnote\nthe film\tpos\tx\ty\n")  # a repeated column not read
    assert read_split(task("mood", **MOOD), "train", tmp_path).dataset["text_a"] == ["the film"]


def test_data_is_utf8_only(tmp_path):
    (tmp_path / "m.tsv").write_bytes(mood_file("the film\tpos", "un café\tneg").encode("latin-1"))
    with pytest.raises(MtbertError, match=r"m.tsv:3: not UTF-8 text: byte 0xe9 at offset 30"):
        read_split(task("mood", **MOOD), "train", tmp_path)
    (tmp_path / "m.tsv").write_bytes(b"\xef\xbb\xbf" + mood_file("un café\tneg").encode("utf-8"))
    assert read_split(task("mood", **MOOD), "train", tmp_path).dataset["text_a"] == ["un café"]


def test_a_folder_or_unreadable_file_given_as_data(tmp_path, monkeypatch):
    (tmp_path / "m.tsv").mkdir()
    with pytest.raises(MtbertError, match=r"m.tsv: the .* is a folder, not a file"):
        read_split(task("mood", **MOOD), "train", tmp_path)
    (tmp_path / "m.tsv").rmdir()
    write(tmp_path, "m.tsv", mood_file(*OK_ROWS))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # chmod cannot stop root, who runs some test machines
    monkeypatch.setattr("mtbert.textfiles.open", denied, raising=False)
    with pytest.raises(MtbertError, match=r"m.tsv: cannot read the .* \(Permission denied\)"):
        read_split(task("mood", **MOOD), "train", tmp_path)


def test_jsonl_fields_the_task_reads_are_text_or_numbers(tmp_path):
    qa = dict(format="jsonl", train_file="q.jsonl", text_columns=["q"], label_column="y", kind="binary",
              id_column="id")
    rows = [{"q": "is it?", "y": 1, "id": 7, "meta": {"any": "thing"}}, {"q": 42, "y": "0", "id": "b"}]
    write(tmp_path, "q.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_split(task("qa", **qa), "train", tmp_path)
    assert data.dataset["text_a"] == ["is it?", "42"] and data.dataset["id"] == ["7", "b"]
    write(tmp_path, "q.jsonl", json.dumps({"q": "ok", "y": 1}) + "\n" + json.dumps({"q": ["is", "it"], "y": 0}))
    with pytest.raises(MtbertError, match=r"q.jsonl:2: field 'q' holds a JSON array; expected text or a number"):
        read_split(task("qa", **qa), "train", tmp_path)


@pytest.mark.parametrize("raw", ["nan", "inf", "-Infinity"])
def test_a_score_must_be_finite(tmp_path, raw):
    write(tmp_path, "s.csv", f"text,score\nthe film,1.5\na dull plot,{raw}\n")
    reg = task("r", format="csv", train_file="s.csv", text_columns=["text"], label_column="score",
               kind="regression")
    with pytest.raises(MtbertError, match=rf"s.csv:3: score '{raw}' of task r is not a finite number"):
        read_split(reg, "train", tmp_path)


def test_lines_and_ids(tmp_path):
    folder = tmp_path / "cs224n"
    write(tmp_path, "cs224n/ids-sst-test-student.csv", "\tid\tsentence\n0\ta\tone\n1\t\ttwo\n2\tc\t\n3\td\tfour\n")
    data = read_split(task("sst"), "test", tmp_path)
    assert data.dataset["id"] == ["a", "", "d"]  # an empty id stays empty (a submission refuses it)
    assert data.lines.tolist() == [2, 3, 5] and data.skipped_lines == [4] and not data.ids_are_positions
    (folder / "ids-sst-test-student.csv").write_text("\tsentence\n0\tone\n1\ttwo\n")
    data = read_split(task("sst"), "test", tmp_path)
    assert data.dataset["id"] == ["0", "1"] and data.ids_are_positions
