"""The checkout demo: the mission's saga against small fake services."""
