"""hemoprofile.report.qc: robust z-scores and the intensity QC flags of slides against their cohort."""

import numpy as np
import pandas as pd

from hemoprofile.report.qc import intensity_qc, robust_z


def test_intensity_qc_and_robust_z():
    medians = pd.DataFrame({"DAPI": [1000.0, 1010, 990, 1005, 998], "CK": [300.0, 305, 298, 302, 1500]},
                           index=list("abcde"))
    qc = intensity_qc(medians)
    assert qc["flagged"].tolist() == [False, False, False, False, True]
    assert qc.loc["e", "reason"].startswith("CK z = +")
    assert not intensity_qc(medians.iloc[:4])["flagged"].any()
    # too few slides: nothing is compared
    assert not intensity_qc(medians.iloc[[0, 4]])["flagged"].any()
    # a slide without cells (NaN) is neither flagged nor breaks the others
    with_nan = pd.concat([medians, pd.DataFrame({"DAPI": [np.nan], "CK": [np.nan]}, index=["f"])])
    assert intensity_qc(with_nan)["flagged"].tolist() == [False, False, False, False, True, False]
    # identical slides: MAD 0 is floored, nobody is flagged for a 0.5 % difference
    assert np.all(np.abs(robust_z([100.0, 100, 100, 100.5])) < 3)
