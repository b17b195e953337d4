"""The proposal (inference network) q_phi(a | y, x): it reads the reference caption.

Factorised (default): g_1..g_T = BiLSTM(E' y_1..y_T); q_t = softmax_i r_phi(F_i, g_t). q does
not depend on the decoder, so all locations can be drawn before the decoder runs.
Sequential: r_phi also sees the decoder state h_{t-1}, so locations are drawn step by step.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from captioner.models.decoder import log_softmax
from captioner.models.fused import additive_scores


class CaptionProposal(nn.Module):
    """q_phi(a | y, x). `sequential=True` adds the decoder state h_{t-1} to the scores."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embedding_dim: int,
        hidden_dim: int,
        attention_dim: int,
        decoder_hidden_dim: int,
        sequential: bool = False,
    ):
        super().__init__()
        self.sequential = sequential
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.reader = nn.LSTM(embedding_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.attend_feature = nn.Linear(feature_dim, attention_dim)
        self.attend_word = nn.Linear(2 * hidden_dim, attention_dim, bias=False)
        self.attend_decoder = nn.Linear(decoder_hidden_dim, attention_dim, bias=False) if sequential else None
        self.attend_score = nn.Linear(attention_dim, 1)

    def read_caption(self, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """targets (N, T) = y_1..y_T (padded), lengths (N,) -> word contexts g (N, T, 2 * hidden), zero
        on padding. The backward direction starts at each caption's own last word: it reads every
        caption reversed within its length. (Packing would do the same but needs the lengths on the
        CPU, a device-to-host wait in every training step.)"""
        embedded = self.embedding(targets)
        n, steps, _ = embedded.shape
        position = torch.arange(steps, device=targets.device)
        real = position < lengths.unsqueeze(1)  # (N, T)
        reverse = torch.where(real, lengths.unsqueeze(1) - 1 - position, position)  # its own inverse
        forward = self._direction(embedded, "")
        backward = self._direction(_take_steps(embedded, reverse), "_reverse")
        context = torch.cat([forward, _take_steps(backward, reverse)], -1)
        return context * real.unsqueeze(-1).to(context.dtype)

    def _direction(self, inputs: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction of the bidirectional reader over (N, T, E) from a zero state -> (N, T, H)."""
        reader = self.reader
        weights = [getattr(reader, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        zeros = inputs.new_zeros(1, inputs.shape[0], reader.hidden_size)
        with warnings.catch_warnings():
            # cuDNN copies one direction's four tensors into a contiguous buffer on each call and says
            # so once per process; the copy is the price of reading each caption reversed within its
            # own length (a few MB at the Flickr8k sizes), not a fault to report to the user.
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            output, _, _ = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
        return output

    def scores(self, projected: torch.Tensor, context: torch.Tensor, decoder_hidden: torch.Tensor | None = None):
        """projected (N, L, A) with context (N, T, C) -> (N, T, L); or context (N, C) -> (N, L)."""
        query = self.attend_word(context)
        if decoder_hidden is not None:
            query = query + self.attend_decoder(decoder_hidden)
        if context.dim() == 2:
            return self.attend_score(torch.tanh(projected + query.unsqueeze(1))).squeeze(-1)
        return self.attend_score(torch.tanh(projected.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)

    def log_probs(self, features: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """Factorised q: log q_t(i) for every step, (N, T, L). features (M, L, D) with rows (N,) the
        image of each caption (None: M = N)."""
        if self.sequential:
            raise ValueError("a sequential proposal needs the decoder state; use step_log_probs")
        context = self.read_caption(targets, lengths)
        scores = additive_scores(self.attend_feature(features), self.attend_word(context),
                                 self.attend_score.weight[0], self.attend_score.bias[0], rows)
        return log_softmax(scores)

    def step_log_probs(
        self, projected: torch.Tensor, context_t: torch.Tensor, decoder_hidden: torch.Tensor | None
    ) -> torch.Tensor:
        """log q_t (N, L) for one step; projected = attend_feature(features)."""
        return log_softmax(self.scores(projected, context_t, decoder_hidden))


def _take_steps(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (N, T, C) reordered along time by index (N, T): out[n, t] = values[n, index[n, t]]."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
