"""Pruning criteria, registered by name: ``create_criterion("l2")``.

>>> sorted(set(list_criteria()) & {"l1", "l2", "fpgm", "random"})
['fpgm', 'l1', 'l2', 'random']
"""
from edgeprune.criteria import magnitude as _magnitude  # noqa: F401  (registers l1, l2, fpgm, random)
from edgeprune.criteria import rank as _rank  # noqa: F401  (registers hrank, fms)
from edgeprune.criteria import csctfp as _csctfp  # noqa: F401  (registers csctfp)
from edgeprune.criteria import tcfp as _tcfp  # noqa: F401  (registers tcfp)
from edgeprune.criteria import soft as _soft  # noqa: F401  (registers sfp)
from edgeprune.criteria import thinet as _thinet  # noqa: F401  (registers thinet)
from edgeprune.criteria.base import (Criterion, CriterionEntry, combine, create_criterion, criterion_entry, filters,
                                    list_criteria, register_criterion, score_groups)

__all__ = ["Criterion", "CriterionEntry", "combine", "create_criterion", "criterion_entry", "filters", "list_criteria",
           "register_criterion", "score_groups"]
