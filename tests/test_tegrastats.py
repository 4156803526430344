from vtpdeploy.deploy.bench.tegrastats import parse_line, summarize

JP5 = ("RAM 4722/7844MB (lfb 1x512kB) SWAP 0/3922MB (cached 0MB) CPU [12%@1420,5%@1420,off,off] EMC_FREQ 0% "
       "GR3D_FREQ 10%@1300 VDD_IN 5139mW/5139mW VDD_CPU_GPU_CV 1001mW/1001mW VDD_SOC 1402mW/1402mW")
JP_OLD = "RAM 2000/3964MB (lfb 100x4MB) CPU [3%@102,2%@102,1%@102,1%@102] EMC_FREQ 0% GR3D_FREQ 10% PLL@21C POM_5V_IN 3000/2900 POM_5V_GPU 120/110"
JP7 = ("RAM 9000/62000MB (lfb 8x4MB) SWAP 0/31000MB (cached 0MB) CPU [1%@2601,2%@2601] GR3D_FREQ 12%@[1300,1300] "
       "VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 800mW/700mW/900mW VIN_SYS_5V0 3000mW/2900mW/3100mW")


def test_jetpack5_line():
    s = parse_line(JP5)
    assert (s["ram_used_mb"], s["ram_total_mb"]) == (4722, 7844)
    assert (s["swap_used_mb"], s["swap_total_mb"]) == (0, 3922)
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (10, 1300)
    assert s["rails"] == {
        "VDD_IN": {"current_mw": 5139, "avg_mw": 5139},
        "VDD_CPU_GPU_CV": {"current_mw": 1001, "avg_mw": 1001},
        "VDD_SOC": {"current_mw": 1402, "avg_mw": 1402},
    }
    assert s["cpu"][0] == {"load_pct": 12, "freq_mhz": 1420} and s["cpu"][2] is None


def test_older_gr3d_without_freq_and_pom_rails():
    s = parse_line(JP_OLD)
    assert s["gpu_load_pct"] == 10 and s["gpu_freq_mhz"] is None
    assert s["rails"]["POM_5V_IN"] == {"current_mw": 3000, "avg_mw": 2900}
    assert s["rails"]["POM_5V_GPU"] == {"current_mw": 120, "avg_mw": 110}


def test_jetpack7_line():
    s = parse_line(JP7)
    assert (s["ram_used_mb"], s["ram_total_mb"]) == (9000, 62000)
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (12, 1300)
    assert s["gpu_freq_mhz_all"] == [1300, 1300]
    assert s["rails"]["VDD_GPU_SOC"] == {"current_mw": 5139, "avg_mw": 5139, "max_mw": 5139}
    assert s["rails"]["VDD_CPU_CV"]["current_mw"] == 800 and s["rails"]["VDD_CPU_CV"]["avg_mw"] == 700
    assert set(s["rails"]) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}


def test_garbage_and_summary():
    assert parse_line("") is None and parse_line("hello world") is None
    a, b = parse_line(JP5), parse_line(JP5.replace("RAM 4722", "RAM 5000").replace("VDD_IN 5139mW", "VDD_IN 6139mW"))
    s = summarize([a, b])
    assert s["samples"] == 2 and s["ram_used_max_mb"] == 5000 and s["ram_total_mb"] == 7844
    assert s["rails"]["VDD_IN"]["avg_mw"] == 5639.0 and s["rails"]["VDD_IN"]["max_mw"] == 6139
    assert summarize([]) is None
