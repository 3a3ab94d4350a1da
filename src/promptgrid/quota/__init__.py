"""The request budget every API call goes through: one process's, or one shared by workers through Redis."""
