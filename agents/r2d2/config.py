"""Hyper-parameters of R2D2 (importable without torch: config loading is torch-free)."""
from __future__ import annotations

from dataclasses import dataclass

from xlstm_rl.typed import check_range

MAX_SEQUENCE = 100_000
"""Upper bound of sequence lengths (burn-in, trace, period, n-step)."""
MAX_CAPACITY = 10_000_000
"""Upper bound of the replay capacity in sequences."""
MAX_COUNT = 1_000_000_000
"""Upper bound of step / update counts (target period, warm-up, diagnostics)."""
STATE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class R2D2Config:
    """Recurrent Replay Distributed DQN (Kapturowski et al., ICLR 2019), on one process.

    One iteration steps every env ``collect_steps`` times (epsilon-greedy, Ape-X epsilons),
    cuts the streams into sequences of ``burn_in + trace_len`` transitions whose traces start
    every ``period`` steps, inserts them into prioritized replay, then runs learner updates until
    ``samples_per_insert`` sequences have been sampled per inserted sequence. Defaults are the
    paper's (Table 2), except the replay capacity, which is sized to stay under 2 GiB of RAM
    with the mLSTM's matrix-memory states (see ``bytes_per_sequence`` in ``replay``).
    """

    burn_in: int = 40
    """Steps at the start of each sequence that only warm up the recurrent state (no loss, no
    gradient), on the online and the target network, from the stored state."""
    trace_len: int = 80
    """Steps of each sequence after the burn-in that the loss is taken on."""
    period: int = 40
    """Stride between the trace starts of consecutive sequences of one episode (Acme's
    ``replay_period``); at most ``trace_len``, so that every step is trained."""
    n_step: int = 5
    """Steps of the n-step double-Q target (fewer at the end of a sequence or an episode)."""
    gamma: float = 0.997
    """Discount factor."""
    rescale_eps: float = 1e-3
    """Epsilon of the value rescaling ``h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x``."""
    value_rescaling: bool = True
    """Learn rescaled values ``h(Q)`` (False: plain n-step double-Q targets)."""
    target_update_period: int = 2500
    """Learner updates between copies of the online network into the target network."""
    lr: float = 1e-4
    """Adam learning rate."""
    adam_eps: float = 1e-3
    """Adam epsilon."""
    max_grad_norm: float | None = 40.0
    """Global gradient-norm clipping (Ape-X's 40; null: no clipping)."""
    batch_size: int = 64
    """Sequences per learner update."""
    replay_capacity: int = 10_000
    """Sequences the replay holds (oldest overwritten first)."""
    min_replay: int = 1_000
    """Sequences in replay before the learner starts."""
    samples_per_insert: float = 4.0
    """Sequences sampled by the learner per sequence inserted by the actors, kept to within
    one iteration's inserts: the learner waits for data, the actors wait for the learner."""
    priority_eta: float = 0.9
    """Sequence priority ``eta * max|td| + (1 - eta) * mean|td|`` over the valid steps."""
    priority_exponent: float = 0.9
    """Sampling probability proportional to ``priority ** priority_exponent``."""
    importance_exponent: float = 0.6
    """Importance weights ``(N P(i)) ** -importance_exponent``, normalized by the batch max."""
    eps_base: float = 0.4
    """Ape-X actor epsilons ``eps_i = eps_base ** (1 + eps_alpha * i / (N - 1))``."""
    eps_alpha: float = 7.0
    """Exponent spread of the Ape-X epsilons (see ``eps_base``)."""
    collect_steps: int = 40
    """Vector-env steps per iteration (``steps_per_iteration = collect_steps * num_envs``)."""
    dueling_hidden: int = 128
    """Width of the hidden layer of the value and of the advantage stream."""
    state_dtype: str = "float32"
    """Storage dtype of the recurrent states kept in replay: ``float32`` or ``bfloat16``
    (half the bytes; the rounding shows in the staleness diagnostic)."""
    save_replay: bool = True
    """Put the replay contents into checkpoints (exact resume); False keeps checkpoints small
    and a resumed run refills its replay first."""
    staleness_every: int = 100
    """Learner updates between two computations of the staleness diagnostic (0: never)."""
    staleness_episodes: int = 16
    """Recent episodes of the last env (the greediest actor) kept whole for the staleness
    diagnostic; the oldest is used."""
    staleness_max_len: int = 2000
    """Longest episode kept for the staleness diagnostic (longer ones are skipped)."""
    weight_sync_period: int = 25
    """Ape-X runs (``--actors N``): the learner publishes its weights to the actors every this
    many updates."""
    actor_timeout: float = 120.0
    """Ape-X runs: seconds without word from an actor before the learner reports it gone and
    goes on without it."""

    def __post_init__(self) -> None:
        for name in ("trace_len", "period", "n_step", "target_update_period", "batch_size",
                     "collect_steps", "weight_sync_period"):
            high = MAX_SEQUENCE if name in ("trace_len", "period", "n_step") else MAX_COUNT
            check_range(name, getattr(self, name), 1, high, integer=True)
        check_range("burn_in", self.burn_in, 0, MAX_SEQUENCE, integer=True)
        check_range("replay_capacity", self.replay_capacity, 1, MAX_CAPACITY, integer=True)
        check_range("min_replay", self.min_replay, 1, MAX_CAPACITY, integer=True)
        for name in ("staleness_every", "staleness_episodes"):
            check_range(name, getattr(self, name), 0, MAX_COUNT, integer=True)
        check_range("staleness_max_len", self.staleness_max_len, 1, MAX_SEQUENCE, integer=True)
        check_range("dueling_hidden", self.dueling_hidden, 1, 65536, integer=True)
        for name in ("lr", "adam_eps", "rescale_eps", "samples_per_insert"):
            check_range(name, getattr(self, name), 0, 1e6, low_open=True)
        for name in ("gamma", "priority_eta", "priority_exponent", "eps_base"):
            check_range(name, getattr(self, name), 0, 1)
        check_range("importance_exponent", self.importance_exponent, 0, 1)
        check_range("eps_alpha", self.eps_alpha, 0, 1000)
        check_range("actor_timeout", self.actor_timeout, 0, 1e6, low_open=True)
        if self.max_grad_norm is not None:
            check_range("max_grad_norm", self.max_grad_norm, 0, 1e9, low_open=True)
        if self.period > self.trace_len:
            raise ValueError(f"period ({self.period}) must not exceed trace_len "
                             f"({self.trace_len}): steps between traces would never be trained")
        if self.min_replay > self.replay_capacity:
            raise ValueError(f"min_replay ({self.min_replay}) must not exceed replay_capacity "
                             f"({self.replay_capacity})")
        if self.batch_size > self.replay_capacity:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed replay_capacity "
                             f"({self.replay_capacity})")
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}, "
                             f"got {str(self.state_dtype)[:40]!r}")

    @property
    def sequence_len(self) -> int:
        """Transitions per stored sequence: ``burn_in + trace_len``."""
        return self.burn_in + self.trace_len
