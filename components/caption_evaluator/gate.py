"""The blessing decision as a pure function: beat the baseline, meet the floors, do not regress.

A model is blessed only when every rule holds on the eval split:

1. **It beats the most-frequent-caption baseline by a clear margin** on
   CIDEr-D (`min_margin_over_baseline`, default 0.10). The baseline emits the
   single most frequent training caption for every image: any model that
   ignores the image scores about that. CIDEr-D is the metric captioning work
   compares and optimises (Vedantam et al. 2015), and it rewards image-specific
   n-grams that a constant caption cannot get. 0.10 is a tenth of a typical
   human-level Flickr8k CIDEr-D (~1.0): small against a useful model's margin
   (Show, Attend and Tell-class decoders reach ~0.5 on Flickr8k, a constant
   caption ~0.05), far above the noise between two runs of the same model.
2. **Absolute floors and ceilings**, off by default: `min_metrics` on any
   reported metric (e.g. ``{'BLEU-4': 0.15}``) and `max_loss`.
3. **No regression against the latest blessed model** (evaluated on the same
   data in the same run): CIDEr-D may not drop by more than `max_cider_drop`
   (default 0.02, about the spread between seeds on Flickr8k) and the masked
   loss may not rise by more than `max_loss_increase` (default 0.05 nats per
   token).

The reason string names every rule that failed.
"""

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tfx_captioning.models import features

PRIMARY_METRIC = 'CIDEr-D'
"""The metric the baseline-margin and regression rules judge."""
LOSS_METRIC = 'loss'
GREEDY, BEAM = 'greedy', 'beam'
DECODINGS = (GREEDY, BEAM)
"""Which captions the gate judges: the greedy `serving_default` (what a client
gets unless it asks for `caption_beam`) or the beam search."""


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a model may be pushed.

    Attributes:
      min_margin_over_baseline: eval CIDEr-D must exceed the most-frequent-
        caption baseline's by at least this much.
      max_cider_drop: how much lower than the latest blessed model's CIDEr-D
        (on the same eval data) the candidate may score.
      max_loss_increase: how much higher than the latest blessed model's masked
        loss the candidate's may be (nats per token).
      min_metrics: absolute floors, metric name -> lowest acceptable eval
        value (names as reported: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).
      max_loss: absolute ceiling on the masked eval loss; None for none.
      decoding: which captions the rules judge: 'greedy' (the default, what
        `serving_default` serves) or 'beam' (`caption_beam`), to match what
        the deployment's clients call. Both are always reported.
    """

    min_margin_over_baseline: float = 0.10
    max_cider_drop: float = 0.02
    max_loss_increase: float = 0.05
    min_metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_loss: Optional[float] = None
    decoding: str = GREEDY

    def validate(self) -> 'GateConfig':
        """Returns self.

        Raises:
          ValueError: naming every field that is out of range.
        """
        problems = []
        for name in ('min_margin_over_baseline', 'max_cider_drop', 'max_loss_increase'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f'{name} must be a finite number >= 0, got {value!r}')
        if self.max_loss is not None and not (
            isinstance(self.max_loss, (int, float)) and self.max_loss > 0
        ):
            problems.append(f'max_loss must be > 0 or None, got {self.max_loss!r}')
        for name, value in self.min_metrics.items():
            if name not in features.METRIC_NAMES:
                problems.append(
                    f'min_metrics has an unknown metric {name!r}; known: {list(features.METRIC_NAMES)}'
                )
            elif not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f'min_metrics[{name!r}] must be a number, got {value!r}')
        if self.decoding not in DECODINGS:
            problems.append(f'decoding must be one of {DECODINGS}, got {self.decoding!r}')
        if problems:
            raise ValueError('Invalid gate: ' + '; '.join(problems) + '.')
        return self

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        values['min_metrics'] = dict(self.min_metrics)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> 'GateConfig':
        """Builds and validates a gate from a mapping (a config file, JSON exec property).

        Raises:
          ValueError: an unknown key or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'Unknown gate settings {unknown}; known: {sorted(known)}.')
        values = dict(values)
        values['min_metrics'] = dict(values.get('min_metrics') or {})
        return cls(**values).validate()


def decide(
    metrics: Mapping[str, float],
    constant_baseline: Mapping[str, float],
    blessed: Optional[Mapping[str, float]],
    gate: GateConfig,
) -> Tuple[bool, List[str]]:
    """Whether to bless `metrics`; the reasons it fails (empty when blessed).

    Args:
      metrics: the candidate's eval metrics (METRIC_NAMES and 'loss').
      constant_baseline: the most-frequent-caption baseline's eval metrics.
      blessed: the latest blessed model's eval metrics on the same data, or
        None for the first model (then the regression rules do not apply).
      gate: the thresholds.
    """
    failures = []
    score, floor = metrics[PRIMARY_METRIC], constant_baseline[PRIMARY_METRIC]
    if score < floor + gate.min_margin_over_baseline:
        failures.append(
            f'{PRIMARY_METRIC} {score:.4f} does not beat the most-frequent-caption baseline '
            f'{floor:.4f} by {gate.min_margin_over_baseline:.4f}'
        )
    for name, minimum in sorted(gate.min_metrics.items()):
        if metrics[name] < minimum:
            failures.append(f'{name} {metrics[name]:.4f} < min {minimum:.4f}')
    loss = metrics[LOSS_METRIC]
    if gate.max_loss is not None and loss > gate.max_loss:
        failures.append(f'loss {loss:.4f} > max_loss {gate.max_loss:.4f}')
    if blessed is not None:
        if score < blessed[PRIMARY_METRIC] - gate.max_cider_drop:
            failures.append(
                f'{PRIMARY_METRIC} {score:.4f} regressed from the blessed '
                f'{blessed[PRIMARY_METRIC]:.4f} by more than {gate.max_cider_drop:.4f}'
            )
        if loss > blessed[LOSS_METRIC] + gate.max_loss_increase:
            failures.append(
                f'loss {loss:.4f} regressed from the blessed {blessed[LOSS_METRIC]:.4f} '
                f'by more than {gate.max_loss_increase:.4f}'
            )
    return not failures, failures


def passing_summary(
    metrics: Mapping[str, float], constant_baseline: Mapping[str, float], decoding: str = GREEDY
) -> str:
    """The blessing reason of a model that passed: its main numbers against the baseline."""
    return (
        f'{decoding} {PRIMARY_METRIC} {metrics[PRIMARY_METRIC]:.4f} (baseline '
        f'{constant_baseline[PRIMARY_METRIC]:.4f}), BLEU-4 {metrics["BLEU-4"]:.4f}, '
        f'loss {metrics[LOSS_METRIC]:.4f} pass the gate'
    )
