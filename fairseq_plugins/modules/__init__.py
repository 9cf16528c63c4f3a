"""nn.Modules shared by two or more methods (backbones, heads, front-ends)."""
