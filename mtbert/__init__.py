"""mtbert: multi-task fine-tuning of a hand-built BERT encoder."""

__version__ = "0.1.0"

from mtbert.model.bert import BertConfig, BertModel  # noqa: E402

__all__ = ["BertConfig", "BertModel", "__version__"]
