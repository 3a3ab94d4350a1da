"""The prediction API: the HTTP client, what a prediction says, when to poll it, and fetching its output."""
