"""Orders service: an ASAP agent that answers order lookups and checks stock with the inventory agent."""
