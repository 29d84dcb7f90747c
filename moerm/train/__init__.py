"""Training recipes of DMoERM, one module per phase (torchtune's recipes +
components split): ``router`` (prompt -> task classifier), ``phase1`` (task
base reward models), ``phase2`` (capability experts), ``phase3`` (aggregator
MLPs), and ``recipe`` running them all into a bundle. Shared pieces live in
``loop`` (Bradley-Terry loss, batching, seeded resumable training loop)."""
