"""DP-DeepSets: differentially private generative fine-tuning with a hypernetwork.

Reference implementation of arXiv 2606.26772. The one privacy-relevant module is
:mod:`dpdeepsets.privacy`; everything downstream of its release is post-processing.
"""

__version__ = "0.1.0"
