"""A breast tumour's clinical subtype from its HER2 IHC category and its ER and PgR status:
the joint hormone-receptor / HER2 groups a pathology report and a cohort are stratified by.

Rules, each from its guideline:

- **HER2 status** from the IHC category (ASCO/CAP 2018, Wolff et al.; unchanged in the 2023
  update): 3+ positive; 2+ equivocal, to be decided by in situ hybridisation (ISH), which
  an image of the protein cannot do; 1+ and 0 negative (HER2-low and -ultralow are flagged
  on the HER2 score itself).
- **Hormone-receptor (HR) status** from ER and PgR (ASCO/CAP 2020, Allison et al.;
  :func:`qdmed.imaging.receptor_status`): HR positive when ER is positive or low positive,
  or PgR positive; HR negative when both are negative; undetermined otherwise (a receptor
  not gated, without measured nuclei, or with too few nuclei for a status).
- **Subtype**: the four groups of Howlader et al. 2014, as SEER reports them, ``HR+/HER2-``,
  ``HR+/HER2+``, ``HR-/HER2+`` and ``triple negative`` (HR- and HER2-). For what the four
  groups leave out, qdmed's own names: a HER2 2+ tumour is ``HR+/HER2 equivocal`` or
  ``HR-/HER2 equivocal`` until ISH decides, and an undetermined receptor status is said
  (``HER2-, HR undetermined``).

Two flags, both reported: **borderline** when a receptor status that decides the HR group is
borderline (its 95 % interval holds the 1 % cut-off; ER's 10 % cut-off does not change the
group), and a note on **ER low positive** tumours (whatever the PgR), which ASCO/CAP 2020
reports as positive with a comment: the data on endocrine therapy for them are limited but
suggest possible benefit, and such tumours are heterogeneous, often with gene expression
profiles closer to ER-negative ones (several trials count them as triple negative).

qdmed's HER2 category is a QD-IHC measure in the style of the ASCO/CAP IHC categories
(calibrated on control cell lines), not a validated clinical test: the subtype is a research
measure, as its parts are.

References
----------
.. [1] A. C. Wolff, M. E. H. Hammond, K. H. Allison, et al. (2018). Human epidermal growth
   factor receptor 2 testing in breast cancer: ASCO/CAP clinical practice guideline focused
   update. J. Clin. Oncol. 36(20), 2105-2122. doi:10.1200/JCO.2018.77.8738
.. [2] K. H. Allison, M. E. H. Hammond, M. Dowsett, et al. (2020). Estrogen and progesterone
   receptor testing in breast cancer: ASCO/CAP guideline update. J. Clin. Oncol. 38(12),
   1346-1366. doi:10.1200/JCO.19.02309
.. [3] N. Howlader, S. F. Altekruse, C. I. Li, et al. (2014). US incidence of breast cancer
   subtypes defined by joint hormone receptor and HER2 status. J. Natl. Cancer Inst. 106(5),
   dju055. doi:10.1093/jnci/dju055
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qdmed.errors import InputError
from qdmed.imaging._receptors import REF_ALLISON_2020
from qdmed.imaging._scoring import _category
from qdmed.report._json import to_jsonable

__all__ = ["BreastSubtype", "breast_subtype"]

REF_WOLFF_2018 = (
    "Wolff AC, Hammond MEH, Allison KH, et al. Human epidermal growth factor receptor 2 "
    "testing in breast cancer: ASCO/CAP clinical practice guideline focused update. J Clin "
    "Oncol 2018;36(20):2105-2122. doi:10.1200/JCO.2018.77.8738"
)
REF_HOWLADER_2014 = (
    "Howlader N, Altekruse SF, Li CI, et al. US incidence of breast cancer subtypes defined "
    "by joint hormone receptor and HER2 status. J Natl Cancer Inst 2014;106(5):dju055. "
    "doi:10.1093/jnci/dju055"
)

#: What ASCO/CAP 2020 (Allison et al.) asks a report of an ER Low Positive result to say, in
#: qdmed's words: limited data, which suggest possible benefit from endocrine therapy (the
#: patient is eligible for it), and tumours heterogeneous in behaviour and biology, often
#: with gene expression profiles closer to ER-negative ones.
ER_LOW_COMMENT = ("ER low positive (1-10 %): reported as positive; data on endocrine therapy "
                  "for such tumours are limited but suggest possible benefit, and the tumours "
                  "are heterogeneous, often with gene expression closer to ER-negative ones "
                  "(ASCO/CAP 2020)")

#: HER2 IHC category -> HER2 status (ASCO/CAP 2018).
HER2_STATUS = {"0": "negative", "1+": "negative", "2+": "equivocal", "3+": "positive"}
_RECEPTOR_STATUSES = ("negative", "low positive", "positive", "insufficient cells")


@dataclass(frozen=True)
class BreastSubtype:
    """A tumour's joint HR/HER2 subtype (see the module notes for the rules).

    Attributes
    ----------
    subtype : str
        ``'HR+/HER2-'``, ``'HR+/HER2+'``, ``'HR-/HER2+'``, ``'triple negative'``,
        ``'HR+/HER2 equivocal'``, ``'HR-/HER2 equivocal'``, or with an undetermined
        receptor status e.g. ``'HER2-, HR undetermined'``.
    her2_status : {'positive', 'equivocal', 'negative'}
    hr_status : {'positive', 'negative', 'undetermined'}
    borderline : bool
        A receptor status deciding the HR group is borderline.
    rule : str
        What decided, with the parts.
    notes : tuple of str
    """

    subtype: str
    her2_status: str
    hr_status: str
    borderline: bool
    rule: str
    notes: tuple = ()
    reference: str = f"{REF_WOLFF_2018}; {REF_ALLISON_2020}; {REF_HOWLADER_2014}"

    @property
    def label(self) -> str:
        """The subtype as reported: e.g. ``'triple negative (borderline)'``."""
        return self.subtype + (" (borderline)" if self.borderline else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields, plus ``label``."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["label"] = self.label
        return to_jsonable(d)


#: The cut-off (% positive nuclei) that decides a receptor's part in the HR group: 1 %
#: (ASCO/CAP 2020); ER's 10 % only splits low positive from positive, both HR positive.
HR_CUTOFF_PERCENT = 1.0


def _status(st) -> tuple[str, bool]:
    """(status, borderline for the HR group) of a ReceptorStatus or its dict; None: no
    status, "not available" (the receptor not gated, or no nucleus with a value for it).
    Borderline when the 95 % interval of the corrected percentage (``ci95_percent``)
    holds the 1 % cut-off; without an interval, the status's own borderline flag (which
    also counts ER's 10 % cut-off: a review found HR+ flagged borderline at 12 % ER)."""
    if st is None:  # receptor_status leaves out a receptor without gate or measured nuclei
        return "not available", False
    get = st.get if isinstance(st, Mapping) else (lambda k, d=None: getattr(st, k, d))
    status, borderline, ci = get("status"), bool(get("borderline")), get("ci95_percent")
    if status not in _RECEPTOR_STATUSES:
        raise InputError(f"receptor status {status!r} is none of {', '.join(_RECEPTOR_STATUSES)}")
    if ci is not None and len(ci) == 2 and all(
            v is not None and math.isfinite(float(v)) for v in ci):
        borderline = float(ci[0]) <= HR_CUTOFF_PERCENT <= float(ci[1])
    return status, borderline


def breast_subtype(her2_category: str, receptor_status: Mapping[str, Any]) -> BreastSubtype:
    """The joint HR/HER2 subtype of a breast tumour.

    Parameters
    ----------
    her2_category : {'0', '1+', '2+', '3+'}
        The HER2 IHC category (:attr:`Her2Score.category`).
    receptor_status : mapping marker -> ReceptorStatus (or its ``to_dict()``)
        ER and PR statuses (:func:`qdmed.imaging.receptor_status`); a missing one is
        undetermined.

    Returns
    -------
    BreastSubtype

    Raises
    ------
    InputError
        A HER2 category or receptor status outside the accepted values.

    Examples
    --------
    >>> breast_subtype("1+", {"ER": {"status": "negative", "borderline": False},
    ...                       "PR": {"status": "negative", "borderline": False}}).subtype
    'triple negative'
    >>> breast_subtype("3+", {"ER": {"status": "low positive", "borderline": False}}).subtype
    'HR+/HER2+'
    """
    try:  # 3, "3" and 3.0 (a CSV column) read as 3+, as the HER2 calibration reads them
        her2_category = _category(her2_category)
    except InputError:
        raise InputError(f"HER2 category {her2_category!r} is none of "
                         f"{', '.join(HER2_STATUS)}") from None
    her2 = HER2_STATUS[her2_category]
    er, er_b = _status(receptor_status.get("ER"))
    pr, pr_b = _status(receptor_status.get("PR"))
    positive = [(m, b) for m, s, b in (("ER", er, er_b), ("PR", pr, pr_b))
                if s in ("positive", "low positive")]
    if positive:
        # HR+ whichever receptor is positive; borderline only when no positive one is sure
        hr, borderline = "positive", all(b for _, b in positive)
    elif er == "negative" and pr == "negative":
        hr, borderline = "negative", er_b or pr_b
    else:
        hr, borderline = "undetermined", False
    h = {"positive": "HER2+", "negative": "HER2-", "equivocal": "HER2 equivocal"}[her2]
    if hr == "undetermined":
        subtype = f"{h}, HR undetermined"
    elif hr == "negative" and her2 == "negative":
        subtype = "triple negative"
    else:
        subtype = f"HR{'+' if hr == 'positive' else '-'}/{h}"
    notes = []
    if her2 == "equivocal":
        notes.append("HER2 2+ is equivocal: its status is decided by in situ hybridisation "
                     "(ASCO/CAP 2018)")
    if er == "low positive":  # the comment ASCO/CAP 2020 asks every such report to carry
        notes.append(ER_LOW_COMMENT)
    if hr == "undetermined":
        notes.append(f"HR status undetermined: ER {er}, PR {pr}")
    rule = (f"HER2 {her2_category} -> {her2} (ASCO/CAP 2018); ER {er}, PR {pr} -> HR {hr} "
            "(ASCO/CAP 2020: ER or PR positive is HR positive)")
    return BreastSubtype(subtype=subtype, her2_status=her2, hr_status=hr,
                         borderline=bool(borderline), rule=rule, notes=tuple(notes))
