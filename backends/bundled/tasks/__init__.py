"""Task generators and exact solvers: Game of 24 and multi-step arithmetic."""
