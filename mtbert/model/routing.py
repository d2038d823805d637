"""Routing vectors in sequences (Heinsen 2022, "An Algorithm for Routing Vectors in Sequences", arXiv:2211.11754),
written for padded batches: a variable number of input vectors per example, padding ignored exactly.

Each input vector i (a token) is scored by how much it is worth using, a_i, and casts a vote V_ij for every
output vector j. Output j is the sum of the votes, each weighted by phi_ij, the net benefit of routing input i
to output j. The routing probabilities R_ij start uniform and are then re-estimated from how well each output
predicts each input, for a fixed number of iterations. With x~_i = x_i / sqrt(n), n the example's real length,
f the logistic function and N a LayerNorm without parameters:

    a_i      = x~_i . w_A + b_A                                 activation score of input i
    V_ij     = (x~_i * W_F1[j]) W_F2 + B_F2[j]                  vote of input i for output j
    E-step   R_ij = 1 / n_out on the first iteration; then, from the outputs of the one before,
             x^_j = (N(x_out_j) W_G1) * W_G2[j] + B_G2[j]       output j's prediction of an input
             S_ij = log f((x_i . x^_j) W_S[j] + B_S[j]),  R_ij = softmax over j of S_ij
    D-step   D_use_ij = f(a_i) R_ij,  D_ign_ij = f(a_i) - D_use_ij
    M-step   phi_ij = beta_use_ij D_use_ij - beta_ign_ij D_ign_ij,  x_out_j = sum_i phi_ij V_ij
    output   N(x_out) (x_out itself when d_out is 1)

beta_use and beta_ign are per-input linear functions of x_i (the paper's form for sequences of any length).
The votes are never materialised: sum_i phi_ij V_ij = ((sum_i phi_ij x~_i) * W_F1[j]) W_F2 + (sum_i phi_ij) B_F2[j].

Padding: the paper's reference code scales by the padded length and, masked, divides by zero in the softmax.
Here the scale is the real length, padded inputs are zeroed and their f(a_i) is 0, so their D and phi are
exactly 0: appending padding changes no output, and padding gets no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Routing(nn.Module):
    """(B, T, d_inp) token vectors and a (B, T) mask of real tokens -> (B, n_out, d_out) routed vectors."""

    def __init__(self, d_inp: int, n_out: int, d_out: int, iterations: int = 2):
        super().__init__()
        self.n_out, self.d_out, self.iterations = n_out, d_out, iterations
        self.w_a = nn.Parameter(torch.randn(d_inp) / math.sqrt(d_inp))
        self.b_a = nn.Parameter(torch.zeros(()))
        self.beta_use = nn.Linear(d_inp, n_out)
        self.beta_ign = nn.Linear(d_inp, n_out)
        self.w_f1 = nn.Parameter(torch.randn(n_out, d_inp))
        self.w_f2 = nn.Parameter(torch.randn(d_inp, d_out) / math.sqrt(d_inp))
        self.b_f2 = nn.Parameter(torch.zeros(n_out, d_out))
        self.w_g1 = nn.Parameter(torch.randn(d_out, d_inp) / math.sqrt(d_out))
        self.w_g2 = nn.Parameter(torch.randn(n_out, d_inp))
        self.b_g2 = nn.Parameter(torch.zeros(n_out, d_inp))
        self.w_s = nn.Parameter(torch.randn(n_out) / math.sqrt(d_inp))
        self.b_s = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        x = x * real  # padding holds zeros, whatever the encoder left there
        length = real.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1, 1): the real length
        scaled = x * length.rsqrt()  # (B, T, d_inp): x~
        active = torch.sigmoid(scaled @ self.w_a + self.b_a).unsqueeze(-1) * real  # (B, T, 1): f(a), 0 at padding
        use, ignore = self.beta_use(x), self.beta_ign(x)  # (B, T, n_out)
        route = x.new_full((1, 1, self.n_out), 1.0 / self.n_out)  # (1, 1, n_out): R on the first iteration
        out = None
        for iteration in range(self.iterations):
            if iteration:
                route = self.expect(x, out)  # (B, T, n_out)
            d_use = active * route  # (B, T, n_out)
            d_ignore = active - d_use
            phi = use * d_use - ignore * d_ignore  # (B, T, n_out)
            out = self.maximise(scaled, phi)  # (B, n_out, d_out)
        return self.normalise(out)

    def maximise(self, scaled: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """x_out_j = sum_i phi_ij V_ij: (B, T, d_inp), (B, T, n_out) -> (B, n_out, d_out)."""
        mixed = torch.einsum("btj,btd->bjd", phi, scaled)  # (B, n_out, d_inp): sum_i phi_ij x~_i
        return (mixed * self.w_f1) @ self.w_f2 + phi.sum(1).unsqueeze(-1) * self.b_f2  # (B, n_out, d_out)

    def expect(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """R_ij from the outputs' predictions of the inputs: (B, T, d_inp), (B, n_out, d_out) -> (B, T, n_out)."""
        predicted = (self.normalise(out) @ self.w_g1) * self.w_g2 + self.b_g2  # (B, n_out, d_inp): x^_j
        agreement = torch.einsum("btd,bjd->btj", x, predicted)  # (B, T, n_out): x_i . x^_j
        return F.logsigmoid(agreement * self.w_s + self.b_s).softmax(-1)

    def normalise(self, out: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(out, (self.d_out,)) if self.d_out > 1 else out
