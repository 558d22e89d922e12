"""Small real data sets shipped with the package (CSV package data), as pandas DataFrames.

The files are copies of the CSV exports of the Rdatasets collection (github.com/vincentarelbundock/
Rdatasets, commit 1dcc2bf, June 2026) with the row-name column dropped; the values are unchanged.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["ethanol", "motorcycle"]


def _read(name: str) -> pd.DataFrame:
    with resources.files("bayesmoe.datasets").joinpath(name).open("r") as f:
        return pd.read_csv(f)


def ethanol() -> pd.DataFrame:
    """Engine exhaust of ethanol fuel: NOx against the equivalence ratio (88 rows).

    Ethanol was burned in a single-cylinder engine at several compression ratios and equivalence
    ratios, and the emissions of nitrogen oxides were recorded (Brinkman 1981). The GLoME
    model-selection paper (Nguyen, Forbes, Chamroukhi, McLachlan 2021) models NOx given E with
    Gaussian-gated linear experts for K up to 12.

    Columns: ``NOx`` (concentration of NO and NO2, micrograms/J), ``C`` (compression ratio of the
    engine: 7.5, 9, 12, 15 or 18), ``E`` (equivalence ratio, the richness of the air and ethanol
    mixture).

    Source: Brinkman, N. D. (1981) Ethanol fuel -- a single-cylinder engine study of efficiency and
    exhaust emissions. SAE Transactions 90, 1410-1424; used in Cleveland, W. S. (1993) Visualizing
    Data, Hobart Press. Distributed as ``ethanol`` in the R package lattice (licence GPL >= 2), copied
    here from the Rdatasets collection (``csv/lattice/ethanol.csv``). The file holds measurements
    only.

    :returns: a DataFrame with columns ``NOx``, ``C``, ``E`` (float64), 88 rows.
    """
    return _read("ethanol.csv").astype(float)


def motorcycle() -> pd.DataFrame:
    """Head acceleration in a simulated motorcycle accident (133 rows).

    Measurements of head acceleration against time after impact, in tests of crash helmets
    (Silverman 1985); a classic heteroscedastic, non-linear regression (flexmix and mixture-of-experts
    users fit it with a few experts).

    Columns: ``times`` (milliseconds after impact), ``accel`` (head acceleration, in g). Times repeat
    (several measurements at the same time).

    Source: Silverman, B. W. (1985) Some aspects of the spline smoothing approach to non-parametric
    curve fitting. Journal of the Royal Statistical Society B 47, 1-52; distributed as ``mcycle`` in
    the R package MASS (Venables and Ripley 2002, Modern Applied Statistics with S, Springer; licence
    GPL-2 | GPL-3), copied here from the Rdatasets collection (``csv/MASS/mcycle.csv``). The file
    holds measurements only.

    :returns: a DataFrame with columns ``times``, ``accel`` (float64), 133 rows.
    """
    return _read("mcycle.csv").astype(float)
