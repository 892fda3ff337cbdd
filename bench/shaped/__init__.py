"""Viewers on shaped links of their own under one simulcast stream."""
