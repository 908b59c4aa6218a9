"""ConvergenceWarnings are counted into the row of the thread that raised them, also with rows side by side."""

import threading
import warnings

from sklearn.exceptions import ConvergenceWarning

from layerprobe.pipeline.run.rows import convergence_warnings_of_this_thread


def test_rows_fitted_side_by_side_count_only_their_own_warnings():
    counts, barrier = {}, threading.Barrier(3)

    def row(name, n):
        with convergence_warnings_of_this_thread() as caught:
            barrier.wait()  # all three recorders are open at once
            for _ in range(n):
                warnings.warn("did not converge", ConvergenceWarning)
            barrier.wait()  # and none closes before all have warned
        counts[name] = len(caught)

    threads = [threading.Thread(target=row, args=(name, n)) for name, n in (("a", 1), ("b", 5), ("c", 0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == {"a": 1, "b": 5, "c": 0}  # with warnings.catch_warnings in each thread, they mixed


def test_other_warnings_are_shown_and_the_filters_restored():
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with convergence_warnings_of_this_thread() as caught:
            warnings.warn("kept", UserWarning)
            warnings.warn("counted", ConvergenceWarning)
        warnings.warn("after", ConvergenceWarning)
    assert [str(w.message) for w in shown] == ["kept", "after"] and len(caught) == 1
    assert warnings.filters == before


def test_a_recorder_restored_by_another_threads_catch_warnings_does_not_call_itself():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with convergence_warnings_of_this_thread():
            leaked = warnings.catch_warnings()  # entered while ours is installed, left after (as in another thread)
            leaked.__enter__()
        leaked.__exit__(None, None, None)  # puts our recorder back as warnings.showwarning
        with convergence_warnings_of_this_thread() as caught:
            warnings.warn("shown", UserWarning)  # before the fix: RecursionError
            warnings.warn("counted", ConvergenceWarning)
    assert [str(w.message) for w in shown] == ["shown"] and len(caught) == 1
