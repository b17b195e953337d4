"""The proposal (inference network) q_phi(a | y, x): it reads the reference caption.

Factorised (default): g_1..g_T = BiLSTM(E' y_1..y_T); q_t = softmax_i r_phi(F_i, g_t). q does
not depend on the decoder, so all locations can be drawn before the decoder runs.
Sequential: r_phi also sees the decoder state h_{t-1}, so locations are drawn step by step.
"""

from __future__ import annotations

import torch
from torch import nn
from captioner.models.decoder import log_softmax
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


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
        """targets (N, T) = y_1..y_T (padded), lengths (N,) -> word contexts g (N, T, 2 * hidden).
        Packed, so that the backward direction starts at each caption's own last word."""
        embedded = self.embedding(targets)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        context, _ = self.reader(packed)
        context, _ = pad_packed_sequence(context, batch_first=True, total_length=targets.shape[1])
        return context

    def scores(self, projected: torch.Tensor, context: torch.Tensor, decoder_hidden: torch.Tensor | None = None):
        """projected (N, L, A) with context (N, T, C) -> (N, T, L); or context (N, C) -> (N, L)."""
        query = self.attend_word(context)
        if decoder_hidden is not None:
            query = query + self.attend_decoder(decoder_hidden)
        if context.dim() == 2:
            return self.attend_score(torch.tanh(projected + query.unsqueeze(1))).squeeze(-1)
        return self.attend_score(torch.tanh(projected.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)

    def log_probs(self, features: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Factorised q: log q_t(i) for every step, (N, T, L)."""
        if self.sequential:
            raise ValueError("a sequential proposal needs the decoder state; use step_log_probs")
        context = self.read_caption(targets, lengths)
        return log_softmax(self.scores(self.attend_feature(features), context))

    def step_log_probs(
        self, projected: torch.Tensor, context_t: torch.Tensor, decoder_hidden: torch.Tensor | None
    ) -> torch.Tensor:
        """log q_t (N, L) for one step; projected = attend_feature(features)."""
        return log_softmax(self.scores(projected, context_t, decoder_hidden))
