"""The causes verify-update names: each a :class:`Cause`, a string whose ``__doc__`` says what it means."""

from __future__ import annotations


class Cause(str):
    """A named cause of a difference between a user's update and the rule. The string is its name in
    reports and JSON; ``__doc__`` explains it; ``allowed`` says whether it is a permitted difference
    (not a failure)."""

    allowed: bool

    def __new__(cls, name: str, doc: str, *, allowed: bool = False):
        self = super().__new__(cls, name)
        self.__doc__ = doc
        self.allowed = allowed
        return self


TIE = Cause("tie", """The user's masks differ from purerigl's only where scores are equal (to float32
precision) at a selection boundary: breaking those ties another way, the rule gives exactly the
user's masks. purerigl breaks ties by a salted hash of the position, ``tie_rank(position, salt)``; a
user's ``torch.topk`` or ``argsort`` by something else. Allowed: reported, not a failure.""", allowed=True)

RANDOM = Cause("random", """The masks differ only where the method grows at random (SET's positions,
GSE's candidate draw): every determined part (the drop, the counts, growth outside the kept set, new
weights 0, and GSE's scoring among the candidates given in ``L.candidates``) agrees. Allowed.""",
               allowed=True)

TOO_MANY_DROPPED = Cause("too-many-dropped", """More active connections were dropped than the rule
drops: floor(alpha * n) of the n active ones (RigL, SET, SRigL), max(1, floor(alpha * K)) of the K
diagonals (diag-rigl), or as many as GSE grows (min(ceil(alpha * n), candidates)). Listed: the
dropped positions the rule keeps. A drop fraction applied to the wrong count, or alpha not yet
decayed, shows here (and usually as too-many-grown too).""")

TOO_FEW_DROPPED = Cause("too-few-dropped", """Fewer active connections were dropped than the rule
drops (see too-many-dropped for the counts). Listed: kept positions the rule drops whose |G| is too
small for them to have been dropped and grown back in the same update.""")

TOO_MANY_GROWN = Cause("too-many-grown", """More connections were grown than the rule grows (RigL,
SET, diag-rigl: as many as were dropped; SRigL: every active row refilled to k = floor(C / n_active);
GSE: as many as it drops). Listed, where growth is scored: the grown positions of smallest |G|.""")

TOO_FEW_GROWN = Cause("too-few-grown", """Fewer connections were grown than the rule grows. Listed,
where growth is scored: the ungrown positions of largest |G| that the rule grows.""")

GREW_KEPT = Cause("grew-kept", """Growth chose positions that were still active after the drop: the
grown set is what the rule gives when kept connections are not excluded from the growth ranking, and
growing an active position changes nothing, so the layer ends with too few connections. Listed: the
kept positions the growth fell on. (A position dropped in this update may grow back: that is not
this cause.)""")

DROP_NOT_BY_MAGNITUDE = Cause("drop-not-by-magnitude", """A dropped weight has |w| strictly larger
than a kept one: the drop keeps the largest |w| (layer-wide; SRigL among the rows that stay
active). Dropping by signed value (w instead of |w|) shows here. Listed: the dropped weights the rule
keeps and the kept weights the rule drops.""")

GROWTH_NOT_BY_GRADIENT = Cause("growth-not-by-gradient", """A grown position has |G| strictly smaller
than a position that could have grown and did not (RigL, diag-rigl: layer-wide among the positions
not kept, just-dropped ones included; SRigL: per row; GSE: among the candidates). Listed: those grown
positions.""")

GROWTH_OUTSIDE_CANDIDATES = Cause("growth-outside-candidates", """GSE grew a position that is not
among the candidates the user says were drawn (``L.candidates``), or that was active before the
update (GSE grows only positions inactive before it).""")

NEW_WEIGHT_NOT_ZERO = Cause("new-weight-not-zero", """A connection inactive before the update and
active after it does not start at exactly 0 (PAPERS.md 1.2: new connections start at 0 with zero
optimizer state, so growing alone does not change the network function).""")

KEPT_WEIGHT_CHANGED = Cause("kept-weight-changed", """A connection active before and after the update
changed its value. That includes one dropped and grown back in the same update: it is not new and
keeps its value (PAPERS.md 1.2, rule 3; TF's reinit_when_same=False). The after weights must be
taken right after the mask update, before any optimizer step.""")

BROKEN_FAN_IN = Cause("broken-fan-in", """SRigL: the active rows (neurons) of the after mask hold
unequal numbers of connections; constant fan-in means every active row holds exactly
k = floor(C / n_active). Listed: the rows whose count is not k.""")

ABLATION_DIFFERS = Cause("ablation-differs", """SRigL: the set of active neurons differs from the
rule's neuron ablation (salient counts against tau = max(1, floor(gamma_sal * floor(C / n_out))),
the output layer never ablated), even with ties broken in the user's favour. Check --gamma-sal and
L.is_output. Listed: the rows active on one side only. The other checks then take the user's active
rows as given.""")

TRIMMED_ROW = Cause("trimmed-row", """SRigL: a row holding more than k connections after the
layer-wide drop is trimmed to its k largest |w|; the user kept one the trim removes (and, when
listed with it, dropped one the trim keeps). The official code trims by an ordering artefact, not by
magnitude (PAPERS.md 3.3). Listed: those positions.""")

PARTIAL_DIAGONAL = Cause("partial-diagonal", """diag-rigl: the after mask holds part of a wrap-around
diagonal; the layer stores whole diagonals only. Listed: the partial diagonals' offsets.""")

UNCLASSIFIED = Cause("unclassified", """The masks differ from the rule's (even with ties broken in the
user's favour) in a way none of the other causes names. Listed: the positions that differ from the
rule's result with ties favouring the user.""")

#: Every cause, in the order reports list them.
CAUSES = (TIE, RANDOM, ABLATION_DIFFERS, BROKEN_FAN_IN, PARTIAL_DIAGONAL, TOO_MANY_DROPPED, TOO_FEW_DROPPED,
          DROP_NOT_BY_MAGNITUDE, TRIMMED_ROW, TOO_MANY_GROWN, TOO_FEW_GROWN, GREW_KEPT, GROWTH_NOT_BY_GRADIENT,
          GROWTH_OUTSIDE_CANDIDATES, NEW_WEIGHT_NOT_ZERO, KEPT_WEIGHT_CHANGED, UNCLASSIFIED)
