"""Stage 2, the engine: jobs in, outcomes out, within the budget, with the retry policy and progress."""
