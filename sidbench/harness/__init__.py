"""The harness: a bench (a Hydra multirun of ordinary runs under one budget), the leaderboard and
its plots read back from MLflow, and the MLflow UI. It uses runs; nothing in a run imports it."""
