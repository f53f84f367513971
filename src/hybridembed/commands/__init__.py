"""Sub-commands of the `hybridembed` CLI; each module registers one parser (and its children)."""
