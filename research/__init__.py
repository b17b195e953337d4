"""Research harness: the studies, sweeps and analyses behind eval/ (not part of the captioner package).

Run each from the repository root as `python -m research.NAME --help`; the captioner package never
imports this folder.
"""
