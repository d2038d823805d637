"""Streamed train files (data/streamed.py): the same examples as a full read, an order that resumes exactly
(mid-pass and across passes), process slices that add up to one process's batches, one-line errors."""

import json

import pytest
import torch

from mtbert.data.collate import collate
from mtbert.data.encoding import encoder
from mtbert.data.reading import read_split, stream_rows
from mtbert.data.streamed import StreamedSplit, StreamedTaskStream
from mtbert.errors import MtbertError
from mtbert.tasks import TaskConfig, resolve_task

from conftest import write_cs224n


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_cs224n(folder)
    return folder


def task(name: str):
    return resolve_task(name, TaskConfig(streaming=True), default_batch_size=4)


@pytest.mark.parametrize("name", ["sst", "quora"])
def test_a_streamed_file_holds_the_examples_a_full_read_holds(data_dir, name):
    t = task(name)
    whole = read_split(t, "train", data_dir).dataset
    streamed = [example for _, example in stream_rows(t, data_dir / t.files["train"])]
    columns = [c for c in ("id", "text_a", "text_b", "label") if c in whole.column_names]
    assert [{c: e[c] for c in columns} for e in streamed] == whole.select_columns(columns).to_list()
    assert len(streamed) > 20


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from mtbert.data.loading import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


def stream(data_dir, tokenizer, batch_size=4, processes=1, index=0, buffer=8):
    t = task("sst")
    return StreamedTaskStream(StreamedSplit(t, data_dir / t.files["train"]), batch_size, seed=3, stream_id=1,
                              pad_id=0, tokenizer=tokenizer, max_length=32,
                              buffer_size=buffer, num_processes=processes, process_index=index)


def ids(batches):
    return [[e["id"] for e in batch] for batch in batches]


def test_each_pass_is_a_shuffled_permutation_and_a_new_pass_a_new_order(data_dir, tokenizer):
    s = stream(data_dir, tokenizer)
    all_ids = read_split(task("sst"), "train", data_dir).dataset["id"]
    size = len(all_ids)
    first = [e["id"] for _ in range(-(-size // 4)) for e in s.next_examples()]
    assert sorted(first) == sorted(all_ids) and first != all_ids
    assert s.state.passes == 0 and s.state.position == size
    second = [e["id"] for _ in range(-(-size // 4)) for e in s.next_examples()]
    assert s.state.passes == 1 and sorted(second) == sorted(first) and second != first


@pytest.mark.parametrize("taken", [3, 13, 25])  # mid-pass, and past the end of the first pass
def test_a_restored_stream_continues_exactly(data_dir, tokenizer, taken):
    s = stream(data_dir, tokenizer)
    for _ in range(taken):
        s.next_examples()
    state = json.loads(json.dumps(s.state_dict()))  # as a checkpoint stores it
    expected = [s.next_batch() for _ in range(6)]
    restored = stream(data_dir, tokenizer)
    restored.load_state_dict(state)
    for want, got in zip(expected, (restored.next_batch() for _ in range(6)), strict=True):
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_two_processes_see_the_examples_of_one_at_twice_the_batch(data_dir, tokenizer):
    one = stream(data_dir, tokenizer, batch_size=4)
    halves = [stream(data_dir, tokenizer, batch_size=2, processes=2, index=i) for i in range(2)]
    for _ in range(15):
        whole = [e["id"] for e in one.next_examples()]
        a, b = (h.next_examples() for h in halves)
        assert sorted(e["id"] for e in a + b) == sorted(whole)


def test_a_batch_is_tokenised_as_the_cached_path_tokenises_it(data_dir, tokenizer):
    s = stream(data_dir, tokenizer)
    examples = s.next_examples()
    restored = stream(data_dir, tokenizer)
    batch = restored.next_batch()
    columns = {k: [e[k] for e in examples] for k in ("text_a", "text_b", "label")}
    tokens = encoder(task("sst"), tokenizer, 32)(columns)
    expected = collate(columns | tokens, 0)
    assert all(torch.equal(batch[k], expected[k]) for k in expected) and batch["labels"].tolist() == columns["label"]


def test_a_streamed_file_without_its_label_column_is_one_line_naming_it(tmp_path):
    t = task("sst")
    path = tmp_path / "train.csv"
    path.write_text("\tid\tsentence\n0\ta\tgood film\n")
    with pytest.raises(MtbertError, match=r"train.csv: no label column 'sentiment'"):
        StreamedSplit(t, path).check()
    with pytest.raises(MtbertError, match=r"not found"):
        StreamedSplit(t, tmp_path / "missing.csv").check()
    path.write_text("\tid\tsentence\tsentiment\n0\ta\tgood film\t9\n")
    with pytest.raises(MtbertError, match=r"train.csv:2: label '9' of task sst is out of range"):
        StreamedSplit(t, path).check()


def test_a_task_without_a_train_file_is_one_line_naming_the_key():
    """A task read from the hub has no file to stream: the error says so, not a path of '.'."""
    from mtbert.config import HubConfig

    hub = resolve_task("mine", TaskConfig(format="glue", train_file=None, text_columns=["sentence"],
                                          label_column="label", kind="binary", streaming=True,
                                          hub=HubConfig(path="fake", name="one", text_columns=["s"])))
    with pytest.raises(MtbertError, match=r"^tasks.mine.streaming: task mine has no train file to stream "
                                          r"\(tasks.mine.train_file\)"):
        StreamedSplit(hub, None)
