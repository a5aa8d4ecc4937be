"""The release stage: a registered version becomes a tested image in the registry and, at one fenced commit
point, the champion.

- ``build_context`` and ``prune``: the serving image's build context and the slimming of its environment;
- ``image``: Docker and registry steps (build, push by a build tag, pull back by digest, run, clean up);
- ``smoke``: the running image answers its bundle's reference records as training scored them;
- ``record``: the deploy gate, the commit point and the release record (who, when, why, what served);
- ``github``: the GitHub release of a commit;
- ``lock``: the deploy lock that keeps two builds from overlapping (correctness is the commit point's fence).
"""
