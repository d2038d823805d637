import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mtbert.commands.flops import (
    TRAINING_MULTIPLIER,
    encoder_forward_flops,
    layer_forward_flops,
    measure_matmul_peak,
    sequence_lengths,
)
from mtbert.model.bert import BertConfig, BertModel

TINY = BertConfig(vocab_size=50, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                  max_position_embeddings=16)


def test_layer_flops_by_hand():
    # One sequence of 3 tokens, H = 4, I = 8. Multiply-adds, each 2 FLOPs:
    #   Q, K, V, attention output: 4 matrices (3 x 4) @ (4 x 4) -> 4 * 3*4*4 = 192 multiply-adds
    #   feed-forward: (3 x 4) @ (4 x 8) and (3 x 8) @ (8 x 4) -> 96 + 96 = 192
    #   scores (3 x 4) @ (4 x 3) = 36 and weighted values (3 x 3) @ (3 x 4) = 36, over all heads -> 72
    # (192 + 192 + 72) * 2 = 912 FLOPs.
    assert layer_forward_flops(TINY, 3) == 912


def test_encoder_flops_sum_sequences_and_layers():
    config = BertConfig(vocab_size=50, hidden_size=4, num_hidden_layers=3, num_attention_heads=2, intermediate_size=8)
    assert encoder_forward_flops(config, [3, 3]) == 3 * 2 * 912
    assert encoder_forward_flops(config, []) == 0


@pytest.mark.parametrize("length", [1, 5, 9])
def test_training_flops_match_torch_flop_counter(length):
    """torch's own count of the matrix products in a forward + backward pass of the encoder, on a sequence
    without padding, equals 3x our forward formula (the embeddings' gradient needs no matrix product)."""
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertModel(config, add_pooling_layer=False).train()  # training: attention runs as counted bmm
    ids = torch.randint(1, 50, (1, length))
    with FlopCounterMode(display=False) as counter:
        model(ids).last_hidden_state.sum().backward()
    assert counter.get_total_flops() == TRAINING_MULTIPLIER * encoder_forward_flops(config, [length])


def test_sequence_lengths_count_both_sides_of_a_pair():
    batch = {"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "attention_mask_b": torch.tensor([[1, 0], [1, 1]])}
    assert sequence_lengths(batch) == [3, 2, 1, 2]


def test_matmul_peak_is_a_positive_rate():
    peak = measure_matmul_peak(torch.float32, "cpu", sizes=(64,), repeats=2)
    assert peak["flops_per_s"] > 0 and peak["size"] == 64 and peak["dtype"] == "float32"
    assert peak["threads"] == torch.get_num_threads()
