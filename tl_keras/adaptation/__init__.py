"""Learning from unlabelled target images, one method a module (TLlib's layout), composed by
the one Keras `train_step` of `model.AdaptationModel`, which runs inside any tf.distribute
strategy's scope.

The methods are named in `tl_keras.config.methods.ADAPTATION` (the one list); the code of a
method NAME is `NAME.py` here, whose `TERMS` are the `base.Term`s (a loss and its hooks) it
adds to the labelled cross-entropy (see `registry`):

- self_training: FixMatch with distribution alignment (`self_training.SelfTraining`);
- align: the same, plus a DANN domain classifier behind gradient reversal
  (`align.DomainAdversarial`);
- none: no module, the labelled images alone.

The labelled images of a batch are the target's own, or with no target labels the source's
training images of the target's classes (unsupervised domain adaptation).
"""

from tl_keras.adaptation.base import Adaptation
from tl_keras.adaptation.model import AdaptationModel

__all__ = ["Adaptation", "AdaptationModel"]
