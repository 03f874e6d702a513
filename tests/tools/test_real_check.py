"""real_check.py: the same trained run on the benchmark's test file and on the real one."""

import h5py

import synthetic
from tools import real_check


def test_compares_the_benchmark_and_the_real_test_file(finished_run, real_test_file, tmp_path, capsys):
    run_dir, tiny_benchmark = finished_run.dir, finished_run.data
    real = tmp_path / "real.hdf5"  # the real file's first 100 images: 32 test-time views of 1,000 take seconds
    with h5py.File(real_test_file) as h5:
        synthetic.write_hdf5(real, {key: h5[key][:100] for key in h5})
    assert real_check.main([str(run_dir), "--real", str(real), "--benchmark", str(tiny_benchmark)]) == 0
    bench, real = capsys.readouterr().out.splitlines()
    assert bench.startswith("benchmark test") and "n    80" in bench and "accuracy" in bench
    assert real.startswith("real test") and "n   100" in real and "accuracy" not in real
    predicted = sum(line == "1" for line in finished_run.predictions.read_text().splitlines()) / 80
    assert f"state 1 {predicted:.1%}" in bench  # the same predictions as the run itself wrote


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert real_check.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
