"""Learning from unlabelled target images, one method a module (TLlib's layout), composed by
the one Keras `train_step` of `model.AdaptationModel`, which runs inside any tf.distribute
strategy's scope.

The methods are named in `tl_keras.config.methods.ADAPTATION` (the one list); the code of a
method NAME is `NAME.py` here, whose `TERMS` are the `base.Term`s (a loss and its hooks) it
adds to the labelled cross-entropy (see `registry`):

- self_training: FixMatch with distribution alignment (`self_training.SelfTraining`);
- align: the same, plus a DANN domain classifier behind gradient reversal
  (`align.DomainAdversarial`);
- shot: source-free, SHOT (`shot.InformationMaximisation`): the classifier frozen, the
  features trained by information maximisation and centroid pseudo-labels;
- none: no module, the labelled images alone.

The labelled images of a batch are the target's own, or with no target labels the source's
training images of the target's classes (unsupervised domain adaptation; none for a
source-free method).

Around every method: `teacher` (pseudo-labels from a mean teacher, --teacher=ema),
`selection` (the epoch kept, judged on the unlabelled images without labels) and `guard`
(a collapse to one class undone), fed by one prediction pass per epoch
(`model.AdaptationModel.watched`).
"""

from tl_keras.adaptation.base import Adaptation
from tl_keras.adaptation.model import AdaptationModel

__all__ = ["Adaptation", "AdaptationModel"]
