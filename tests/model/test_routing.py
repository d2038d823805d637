"""The routing pooler (Heinsen 2022): the algorithm against a loop-by-loop transcription of its steps, padding that
changes nothing, gradients at every real token and none at padding, and a pooler that trains."""

import math

import pytest
import torch

from mtbert.model.pooling import RoutingPooler, build_pooler
from mtbert.model.routing import Routing


def randomised(routing: Routing) -> Routing:
    """Every parameter drawn at random (biases included), so that no term of the algorithm is zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in routing.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return routing


def by_hand(r: Routing, x: torch.Tensor) -> torch.Tensor:
    """One example's (n, d_inp) real tokens routed step by step as the paper writes it, with explicit loops."""
    n, f = x.shape[0], torch.sigmoid
    xs = x / math.sqrt(n)
    a = [float(xs[i] @ r.w_a + r.b_a) for i in range(n)]
    votes = [[(xs[i] * r.w_f1[j]) @ r.w_f2 + r.b_f2[j] for j in range(r.n_out)] for i in range(n)]
    norm = (lambda v: torch.nn.functional.layer_norm(v, v.shape)) if r.d_out > 1 else (lambda v: v)
    out = None
    for iteration in range(r.iterations):
        if iteration == 0:
            route = [[1.0 / r.n_out] * r.n_out for _ in range(n)]
        else:
            predictions = [(norm(out[j]) @ r.w_g1) * r.w_g2[j] + r.b_g2[j] for j in range(r.n_out)]
            route = []
            for i in range(n):
                scores = torch.stack([torch.log(f((x[i] @ predictions[j]) * r.w_s[j] + r.b_s[j]))
                                      for j in range(r.n_out)])
                route.append(torch.softmax(scores, 0).tolist())
        out = []
        for j in range(r.n_out):
            total = torch.zeros(r.d_out)
            for i in range(n):
                use = f(torch.tensor(a[i])) * route[i][j]
                ignore = f(torch.tensor(a[i])) - use
                phi = r.beta_use(x[i])[j] * use - r.beta_ign(x[i])[j] * ignore
                total = total + phi * votes[i][j]
            out.append(total)
    return torch.stack([norm(o) for o in out])


@pytest.mark.parametrize("n_out, d_out, iterations", [(3, 4, 3), (2, 1, 1)])
@torch.no_grad()
def test_routing_follows_the_algorithm_step_by_step(n_out, d_out, iterations):
    routing = randomised(Routing(5, n_out, d_out, iterations))
    torch.manual_seed(2)
    x = torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    out = routing(x, mask)
    assert out.shape == (2, n_out, d_out)
    assert torch.allclose(out[0], by_hand(routing, x[0]), atol=1e-5)
    assert torch.allclose(out[1], by_hand(routing, x[1, :3]), atol=1e-5)  # its three real tokens only


def test_padding_changes_nothing_and_gets_no_gradient():
    routing = randomised(Routing(8, 4, 3, 2))
    torch.manual_seed(3)
    x = torch.randn(1, 5, 8, requires_grad=True)
    alone = routing(x, torch.ones(1, 5))
    garbage = torch.randn(1, 7, 8) * 100  # whatever the encoder leaves at padded positions
    padded_input = torch.cat([x, garbage], 1)
    padded_input.retain_grad()
    padded = routing(padded_input, torch.tensor([[1] * 5 + [0] * 7]))
    assert torch.allclose(alone, padded, atol=1e-6)
    padded.square().sum().backward()
    grads = padded_input.grad[0].norm(dim=-1)
    assert (grads[:5] > 0).all() and (grads[5:] == 0).all()


@pytest.fixture
def one_thread():
    """Many small steps: one thread (two contend for nothing but time on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_pooler_is_built_from_the_recipe_sizes_and_trains(one_thread):
    pooler = build_pooler("routing", 16, {"outputs": 2, "size": 5, "iterations": 2})
    assert isinstance(pooler, RoutingPooler) and pooler.routing.n_out == 2 and pooler.routing.d_out == 5
    assert isinstance(build_pooler("routing", 16).project, torch.nn.Identity)  # 4 x 4 is the hidden size
    # A toy: the label is whether token vector 0's first feature, summed over the real tokens, is positive.
    torch.manual_seed(0)
    x = torch.randn(64, 7, 16)
    mask = (torch.arange(7) < torch.randint(2, 8, (64, 1))).long()
    labels = ((x[..., 0] * mask).sum(1) > 0).float()
    head = torch.nn.Linear(16, 1)
    optimizer = torch.optim.Adam([*pooler.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooler(x, mask)).squeeze(-1), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
