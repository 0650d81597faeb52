"""The Heterogeneous Hierarchical Decoder: HSD (understanding), PTD (generation), HTE (value)."""
