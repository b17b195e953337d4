"""The attention LSTM decoder p_theta(y, a | x) of shared/design/wsram.md.

Two layouts share one set of parameters:
- fused (`forward_given_locations`): every location a_t is known in advance (teacher forcing,
  locations drawn from a factorised proposal), so the LSTM runs once over the whole sequence
  and the prior's logits for every step come from the hidden states in one batched op;
- step by step (`forward_stepwise`, `attention_logits` + `advance`): for drawing locations
  from the prior, expected or soft glimpses, sequential proposals and decoding.

Shapes: N sequences, T steps, L locations, D feature size, H hidden size, V vocabulary.

Several glimpses per word (`glimpses` G > 1, model.glimpses_per_word): a_t is then G locations drawn
independently from pi_t, z_t the mean of their features, and log pi_t(a_t) the sum of their log
probabilities. Locations are (N, T) with one glimpse per word and (N, T, G) with several.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from captioner.models.fused import additive_scores, target_log_probs
from captioner.models.noise import BatchShare


@dataclass
class DecoderOutput:
    word_logits: torch.Tensor  # (N, T, V): logits of y_t
    attention_logits: torch.Tensor  # (N, T, L): prior logits s_theta(F_i, h_{t-1})
    locations: torch.Tensor | None  # (N, T) attended location a_t, (N, T, G) with G glimpses (None: expected/soft)
    proposal_log_probs: torch.Tensor | None = None  # (N, T, L): log q_t, when drawn from a proposal
    hidden: torch.Tensor | None = None  # (N, T, H): h_1..h_T


def gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | BatchShare | None = None) -> torch.Tensor:
    """One sample from softmax(logits) along the last dimension (Gumbel-max trick). With a BatchShare
    the noise is this process's rows of one draw for the whole batch."""
    if isinstance(generator, BatchShare):
        uniform = generator.uniform(logits.shape, logits.device)
    else:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits.detach().double() + gumbel).argmax(-1)


def gather_locations(features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """features (N, L, D), locations (N, ...) -> glimpses (N, ..., D): F at each location."""
    n, _, d = features.shape
    flat = locations.reshape(n, -1)
    glimpses = features.gather(1, flat.unsqueeze(-1).expand(-1, -1, d))
    return glimpses.reshape(*locations.shape, d)


def gather_rows(features: torch.Tensor, rows: torch.Tensor | None, locations: torch.Tensor) -> torch.Tensor:
    """features (M, L, D) of M images, rows (N,) the image of each sequence (None: M = N),
    locations (N, ...) -> (N, ..., D) = features[rows[n], locations[n, ...]], without first
    copying each image's grid once per sequence."""
    if rows is None:
        return gather_locations(features, locations)
    m, l, d = features.shape
    flat = (rows.view(-1, *[1] * (locations.dim() - 1)) * l + locations).reshape(-1)
    return features.reshape(m * l, d).index_select(0, flat).reshape(*locations.shape, d)


def draw_glimpses(logits: torch.Tensor, glimpses: int,
                  generator: torch.Generator | BatchShare | None = None) -> torch.Tensor:
    """Locations from softmax(logits) (..., L): one per row (...) when `glimpses` is 1, else
    `glimpses` independent ones (..., G)."""
    if glimpses == 1:
        return gumbel_argmax(logits, generator)
    return gumbel_argmax(logits.unsqueeze(-2).expand(*logits.shape[:-1], glimpses, logits.shape[-1]), generator)


def log_probs_at(log_probs: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """log_probs (..., L) at locations (...) -> (...); or at several per row, (..., G) -> summed, (...)."""
    if locations.dim() == log_probs.dim():
        return log_probs.gather(-1, locations).sum(-1)
    return log_probs.gather(-1, locations.unsqueeze(-1)).squeeze(-1)


# A sequential proposal: (step t, h_{t-1} (N, H), prior log-probs (N, L)) -> proposal log-probs (N, L).
ProposalStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class GroupedDropout(nn.Dropout):
    """Dropout whose mask is drawn once for each group of `group` consecutive rows and shared by
    them. The K attention samples of one caption sit in K consecutive rows (caption-major, as
    `CaptionText.repeat` lays them out); their importance weights must compare locations, not
    dropout masks, so all K rows of a caption see one mask. With group 1 it is plain dropout (the
    same random draws as nn.Dropout)."""

    def forward(self, x: torch.Tensor, group: int = 1) -> torch.Tensor:
        if not self.training or self.p == 0.0 or group == 1:
            return super().forward(x)
        rows = x.shape[0]
        if rows % group:
            raise ValueError(f"{rows} rows are not whole groups of {group} (the K samples of each caption)")
        keep = torch.empty((rows // group, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return x * (keep / (1.0 - self.p)).repeat_interleave(group, 0)


class AttentionDecoder(nn.Module):
    """LSTM decoder with one glimpse per word: hard (one location) or soft (weighted mean)."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embedding_dim: int,
        hidden_dim: int,
        attention_dim: int,
        dropout: float = 0.0,
        soft: bool = False,
        embedding_dropout: float = 0.0,
        zero_init_glimpse: bool = False,
        initial_state: str = "mean_feature",
        initial_state_dropout: float = 0.0,
        glimpses: int = 1,
    ):
        super().__init__()
        if initial_state not in ("mean_feature", "learned"):
            raise ValueError(f"initial_state must be 'mean_feature' or 'learned', got {initial_state!r}")
        if glimpses < 1 or (soft and glimpses != 1):
            raise ValueError(f"glimpses: one or more per word for hard attention, one for soft attention (whose "
                             f"glimpse is already the expectation), got {glimpses}")
        self.soft = soft
        self.glimpses = glimpses
        self.initial_state_from = initial_state
        self.initial_state_dropout = initial_state_dropout
        # Where set, a 0-dim tensor on the device that holds the rate the draw compares with, filled
        # before each update: a CUDA graph then replays a decaying rate (the Trainer sets it); the
        # Python number above still decides whether there is a draw at all.
        self.initial_state_dropout_rate: torch.Tensor | None = None
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.init_hidden = nn.Linear(feature_dim, hidden_dim)
        self.init_cell = nn.Linear(feature_dim, hidden_dim)
        self.attend_feature = nn.Linear(feature_dim, attention_dim)
        self.attend_hidden = nn.Linear(hidden_dim, attention_dim, bias=False)
        self.attend_score = nn.Linear(attention_dim, 1)
        self.lstm = nn.LSTM(embedding_dim + feature_dim, hidden_dim, batch_first=True)
        self.out_hidden = nn.Linear(hidden_dim, embedding_dim)
        self.out_glimpse = nn.Linear(feature_dim, embedding_dim)
        self.out_word = nn.Linear(embedding_dim, vocab_size)
        self.dropout = GroupedDropout(dropout)
        self.embedding_dropout = GroupedDropout(embedding_dropout)
        # Soft attention's gate beta_t = sigmoid(f(h_{t-1})) (Show-Attend-Tell).
        self.gate = nn.Linear(hidden_dim, 1) if soft else None
        if zero_init_glimpse:
            with torch.no_grad():
                self.lstm.weight_ih_l0[:, embedding_dim:] = 0.0
                self.out_glimpse.weight.zero_()

    # ---- pieces shared by both layouts -------------------------------------------------
    def initial_state(self, features: torch.Tensor, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """h_0, c_0 = tanh(W_init mean_i F_i); features (N, L, D) -> two (N, H).

        With `initial_state` "learned" the mean feature is replaced by zeros (h_0 = tanh(b_init), a
        learned constant: the image reaches the decoder through its glimpses only). With
        `initial_state_dropout` p, while training, the mean feature of each image is replaced by zeros
        with probability p (one draw per `group` consecutive rows: the K samples of a caption share it),
        so that the decoder cannot count on the initial state for what it could see by looking."""
        mean = features.mean(1)
        if self.initial_state_from == "learned":
            mean = torch.zeros_like(mean)
        elif self.training and self.initial_state_dropout > 0.0:
            rows = mean.shape[0]
            if rows % group:
                raise ValueError(f"{rows} rows are not whole groups of {group} (the K samples of each caption)")
            rate = self.initial_state_dropout if self.initial_state_dropout_rate is None else self.initial_state_dropout_rate
            keep = torch.rand(rows // group, 1, device=mean.device) >= rate
            mean = mean * keep.to(mean.dtype).repeat_interleave(group, 0)
        return torch.tanh(self.init_hidden(mean)), torch.tanh(self.init_cell(mean))

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """The feature half of the attention MLP, computed once per image: (N, L, A)."""
        return self.attend_feature(features)

    def attention_logits(self, projected: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Prior logits. projected (N, L, A); hidden (N, H) -> (N, L) or (N, T, H) -> (N, T, L)."""
        h = self.attend_hidden(hidden)
        if hidden.dim() == 2:
            return self.attend_score(torch.tanh(projected + h.unsqueeze(1))).squeeze(-1)
        return self.attend_score(torch.tanh(projected.unsqueeze(1) + h.unsqueeze(2))).squeeze(-1)

    def embed(self, tokens: torch.Tensor, group: int = 1) -> torch.Tensor:
        """E y with embedding dropout while training, one mask per `group` consecutive rows."""
        return self.embedding_dropout(self.embedding(tokens), group)

    def word_logits(self, embedded: torch.Tensor, hidden: torch.Tensor, glimpse: torch.Tensor,
                    group: int = 1) -> torch.Tensor:
        """Deep output: W_o tanh(E y_{t-1} + L_h h_t + L_z z_t); its dropout draws one mask per
        `group` consecutive rows."""
        deep = torch.tanh(embedded + self.out_hidden(hidden) + self.out_glimpse(glimpse))
        return self.out_word(self.dropout(deep, group))

    def hard_glimpse(self, features: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """z_t for one step: features (N, L, D) at location (N,) -> (N, D); with several glimpses,
        location (N, G) -> the mean of their features (N, D)."""
        if location.dim() == 2:
            return gather_locations(features, location).mean(1)
        return gather_locations(features, location.unsqueeze(1))[:, 0]

    def draw(self, logits: torch.Tensor, generator: torch.Generator | BatchShare | None = None) -> torch.Tensor:
        """This decoder's glimpse locations from softmax(logits) (N, L): (N,), or (N, G) with G glimpses."""
        return draw_glimpses(logits, self.glimpses, generator)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        """The most probable glimpse: argmax pi_t (N,), or G times it (N, G), the mode of G independent draws."""
        location = logits.argmax(-1)
        return location if self.glimpses == 1 else location.unsqueeze(-1).expand(-1, self.glimpses)

    def soft_glimpse(self, features: torch.Tensor, logits: torch.Tensor, hidden_prev: torch.Tensor) -> torch.Tensor:
        """sum_i pi_i F_i, gated by beta for the soft model. logits (N, L) -> (N, D)."""
        glimpse = torch.einsum("nl,nld->nd", logits.softmax(-1), features)
        if self.gate is not None:
            glimpse = torch.sigmoid(self.gate(hidden_prev)) * glimpse
        return glimpse

    def advance(
        self,
        tokens: torch.Tensor,
        glimpse: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        group: int = 1,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One LSTM step. tokens (N,) = y_{t-1}, glimpse (N, D) -> word logits (N, V), (h_t, c_t).
        Dropout masks are shared by each `group` consecutive rows."""
        embedded = self.embed(tokens, group)
        x = torch.cat([embedded, glimpse], -1).unsqueeze(1)
        h, c = state
        out, (h_new, c_new) = self.lstm(x, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        hidden = out[:, 0]
        return self.word_logits(embedded, hidden, glimpse, group), (h_new[0], c_new[0])

    # ---- fused layout ------------------------------------------------------------------
    def forward_given_locations(
        self, features: torch.Tensor, inputs: torch.Tensor, locations: torch.Tensor,
        rows: torch.Tensor | None = None, group: int = 1,
    ) -> DecoderOutput:
        """Teacher forcing with all locations known. features (M, L, D), inputs (N, T) = y_0..y_{T-1},
        locations (N, T) (or (N, T, G), G glimpses per word); rows (N,) the image of each sequence (None: M = N); each `group`
        consecutive sequences (the K samples of one caption) share their dropout masks. One LSTM
        call over the sequence; prior logits for all t in one op. Per-image work (the feature half
        of the attention, h_0 and c_0) runs once per image however many sequences read it."""
        if self.soft:
            raise ValueError("soft attention has no locations; use forward_stepwise(mode='soft')")
        embedded = self.embed(inputs, group)
        glimpses = gather_rows(features, rows, locations)
        if locations.dim() == 3:  # several glimpses per word: their mean
            glimpses = glimpses.mean(2)
        # one grid per image (rows given): its captions and their samples share the image's draw
        h0, c0 = self.initial_state(features, 1 if rows is not None else group)
        if rows is not None:
            h0, c0 = h0.index_select(0, rows), c0.index_select(0, rows)
        hidden, _ = self.lstm(torch.cat([embedded, glimpses], -1), (h0.unsqueeze(0), c0.unsqueeze(0)))
        previous = torch.cat([h0.unsqueeze(1).to(hidden.dtype), hidden[:, :-1]], 1)  # h_0..h_{T-1}
        attention = additive_scores(self.project_features(features), self.attend_hidden(previous),
                                    self.attend_score.weight[0], self.attend_score.bias[0], rows)
        return DecoderOutput(self.word_logits(embedded, hidden, glimpses, group), attention, locations, hidden=hidden)

    # ---- step-by-step layout -----------------------------------------------------------
    def forward_stepwise(
        self,
        features: torch.Tensor,
        inputs: torch.Tensor,
        mode: str,
        locations: torch.Tensor | None = None,
        proposal: ProposalStep | None = None,
        generator: torch.Generator | None = None,
        group: int = 1,
    ) -> DecoderOutput:
        """Teacher forcing one step at a time, choosing each glimpse by `mode`:
        'given' (locations (N, T)), 'prior' (a_t ~ pi_t), 'proposal' (a_t ~ proposal(t, h, log pi_t)),
        'argmax' (a_t = argmax pi_t), 'expected' (sum_i pi_i F_i) or 'soft' (gated expected glimpse).
        Each `group` consecutive sequences (the K samples of one caption) share their dropout masks."""
        if (mode == "soft") != self.soft:
            raise ValueError(f"mode {mode!r} does not fit a {'soft' if self.soft else 'hard'}-attention decoder")
        n, steps = inputs.shape
        projected = self.project_features(features)
        state = self.initial_state(features, group)
        word_logits, attention, chosen, proposal_log_probs, hiddens = [], [], [], [], []
        for t in range(steps):
            logits = self.attention_logits(projected, state[0])
            location = None
            if mode == "given":
                location = locations[:, t]
            elif mode == "prior":
                location = self.draw(logits, generator)
            elif mode == "argmax":
                location = self.mode(logits)
            elif mode == "proposal":
                log_q = proposal(t, state[0], log_softmax(logits))
                proposal_log_probs.append(log_q)
                location = self.draw(log_q, generator)
            elif mode not in ("expected", "soft"):
                raise ValueError(f"unknown glimpse mode {mode!r}")
            if location is None:
                glimpse = self.soft_glimpse(features, logits, state[0])
            else:
                glimpse = self.hard_glimpse(features, location)
                chosen.append(location)
            step_logits, state = self.advance(inputs[:, t], glimpse, state, group)
            word_logits.append(step_logits)
            attention.append(logits)
            hiddens.append(state[0])
        return DecoderOutput(
            word_logits=torch.stack(word_logits, 1),
            attention_logits=torch.stack(attention, 1),
            locations=torch.stack(chosen, 1) if chosen else None,
            proposal_log_probs=torch.stack(proposal_log_probs, 1) if proposal_log_probs else None,
            hidden=torch.stack(hiddens, 1),
        )

    @torch.no_grad()
    def sample_captions(
        self,
        features: torch.Tensor,
        max_length: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ancestral samples (y, a) ~ p_theta(y, a | x) for the sleep update.

        Returns inputs (N, T) = y_0..y_{T-1}, targets (N, T) = y_1..y_T padded after <eos>, and
        locations (N, T) (or (N, T, G))."""
        n = features.shape[0]
        projected = self.project_features(features)
        state = self.initial_state(features)
        token = torch.full((n,), bos_id, dtype=torch.long, device=features.device)
        finished = torch.zeros(n, dtype=torch.bool, device=features.device)
        inputs, targets, chosen = [], [], []
        for _ in range(max_length):
            location = self.draw(self.attention_logits(projected, state[0]), generator)
            logits, state = self.advance(token, self.hard_glimpse(features, location), state)
            word = gumbel_argmax(logits, generator)
            if len(targets) == max_length - 1:
                word = torch.full_like(word, eos_id)  # every sample ends with <eos>
            word = torch.where(finished, torch.full_like(word, pad_id), word)
            inputs.append(token)
            targets.append(word)
            chosen.append(location)
            finished = finished | (word == eos_id)
            token = word
            if bool(finished.all()):
                break
        return torch.stack(inputs, 1), torch.stack(targets, 1), torch.stack(chosen, 1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim, in at least float32 (bf16 autocast stays accurate)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.log_softmax(x, -1)


def word_log_probs(word_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(y_t | ...) of the target words: (N, T, V), (N, T) -> (N, T)."""
    return target_log_probs(word_logits, targets)


def location_log_probs(attention_logits: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """log pi_t(a_t): (N, T, L), (N, T) -> (N, T); with several glimpses, locations (N, T, G) -> the
    sum over them, (N, T)."""
    return log_probs_at(log_softmax(attention_logits), locations)
