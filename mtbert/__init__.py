"""mtbert: multi-task fine-tuning of a hand-built BERT encoder.

`mtbert.BertModel`, `mtbert.BertConfig` and `mtbert.load_encoder` are imported on first use, so that
`import mtbert.config` (reading a recipe) does not import torch.
"""

__version__ = "0.1.0"

__all__ = ["BertConfig", "BertModel", "__version__", "load_encoder"]


def __getattr__(name: str):
    if name == "BertConfig" or name == "BertModel":
        from mtbert.model import bert

        return getattr(bert, name)
    if name == "load_encoder":
        from mtbert.pretrained import load_encoder

        return load_encoder
    raise AttributeError(f"module 'mtbert' has no attribute {name!r}")
