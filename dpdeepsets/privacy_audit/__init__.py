"""Privacy assurance beyond the arithmetic: empirical audits that can refute a privacy claim.

``stats``    from counts of a test's errors to a lower bound on epsilon (threshold tests with
             Clopper-Pearson bounds; the one-run bound of Steinke, Nasr & Jagielski 2023).
``release``  black-box audit of :func:`dpdeepsets.privacy.release_clipped_mean` on worst-case
             neighbours (replace_one; add_remove with real neighbours of n - 1 and n + 1 rows),
             planted release bugs, and a check of the noise the release really adds.
``dpsgd``    white-box audit of the DP-SGD baseline's own step (Poisson sampler, opacus'
             DPOptimizer with the noise source's generators, the privacy module's noise
             multiplier) with Dirac canaries; needs torch, so it is not imported here.

Every audit is a falsification test: a lower bound above the claimed epsilon refutes the
claim (``caught``); a bound below it proves nothing, and no bound exceeds its ceiling.
``benchmarks/privacy_audit.py`` prints the table of all of them.
"""

from .release import (AUDIT_KEY, NEIGHBOUR_ADJACENCY, NEIGHBOURS, PLANTED_RELEASE_BUGS,  # noqa: F401
                      AuditError, audit_release, check_release_noise, release_row_count_mean,
                      release_sigma_halved, worst_case_neighbours)
from .stats import (clopper_pearson_upper, epsilon_lower_bound, guess_counts,  # noqa: F401
                    max_certifiable_epsilon, one_run_audit, one_run_epsilon_lower_bound,
                    one_run_max_certifiable_epsilon, one_run_p_value, threshold_audit)
