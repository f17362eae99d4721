from parlance.generator.engine.stops import StopStringFilter


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    stop_filter = StopStringFilter(stops)
    out = ""
    for piece in pieces:
        text, stopped = stop_filter.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + stop_filter.flush(), False


def test_stop_across_pieces_is_cut_and_not_returned() -> None:
    assert feed_all(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_partial_match_is_released_when_it_diverges() -> None:
    assert feed_all(["END"], ["hello E", "N", "x"]) == ("hello ENx", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(["END"], ["hello EN"]) == ("hello EN", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(["b c", "a"], ["x b c a"]) == ("x ", True)


def test_no_stops_passes_through() -> None:
    assert feed_all([], ["a", "b"]) == ("ab", False)
