"""Privacy-utility evaluation of frozen encoders: attackers, metrics, baselines, figures.

Privacy is measured as the paper does (§2.2, §3.1): the reconstruction error of
attackers trained from scratch on (input, E(input)) pairs of the training split,
reported on the test split. The honest figure is the worst case over attackers
(the lowest error), never only RAN's own decoder.
"""
