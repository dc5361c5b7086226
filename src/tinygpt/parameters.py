"""The seed's parameter table: where a TinyGPT model's parameters are (embedding / blocks / output)."""


def parameter_table(model) -> list[tuple[str, int]]:
    """(part, count) rows for a TinyGPTForCausalLM; a tied output head adds no parameters of its own."""
    embedding = model.model.embed_tokens.weight.numel() + model.model.embed_positions.weight.numel()
    blocks = sum(p.numel() for p in model.model.layers.parameters()) + sum(
        p.numel() for p in model.model.norm.parameters())
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    output = 0 if tied else model.lm_head.weight.numel()
    return [("embedding (tokens + positions)", embedding), ("transformer blocks", blocks),
            ("output head" + (" (tied to the embedding)" if tied else ""), output),
            ("total", embedding + blocks + output)]


def format_parameter_table(rows: list[tuple[str, int]]) -> str:
    total = rows[-1][1]
    lines = ["| part | parameters | share |", "|---|--:|--:|"]
    lines += [f"| {name} | {count:,} | {100 * count / total:.1f}% |" for name, count in rows]
    return "\n".join(lines)
