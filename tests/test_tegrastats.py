"""tegrastats parsing on lines printed by real boards (each line's source is quoted above it)."""

from vtpdeploy.deploy.bench.tegrastats import energy_per_inference, input_power, parse_line, summarize

# AGX Xavier, JetPack 4.2: tegrastats output pasted in martinkersner/gtop PR #7 ("Added AGX/Xavier support",
# comment of 2019-06-17). Unit-less rails with short names (GPU, CPU, SOC, CV, VDDRQ, SYS5V).
XAVIER_JP4 = ("RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) CPU [0%@1190,0%@1190,0%@1190,0%@1190,"
              "0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% AO@30C GPU@30.5C Tboard@31C Tdiode@32C "
              "AUX@30.5C CPU@31.5C thermal@30.8C PMIC@100C GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 "
              "VDDRQ 309/309 SYS5V 3306/3306")
# TX2, JetPack 3/4: gustavz/realtime_object_detection issue #24 (2018-06-15), unit-less VDD_* rails.
TX2 = ("RAM 1685/7854MB (lfb 1044x4MB) SWAP 278/8192MB (cached 23MB) CPU [4%@346,0%@344,0%@345,1%@345,0%@345,2%@345] "
       "EMC_FREQ 16%@102 GR3D_FREQ 36%@140 APE 150 MTS fg 0% bg 0% BCPU@41C MCPU@41C GPU@39C PLL@41C Tboard@37C "
       "Tdiode@37.25C PMIC@100C thermal@39.9C VDD_IN 1776/1805 VDD_CPU 231/231 VDD_GPU 154/154 VDD_SOC 386/385 "
       "VDD_WIFI 38/38 VDD_DDR 250/288")
# AGX Orin 64 GB, JetPack 5.1 (L4T r35, NVIDIA's nv23.02 torch wheel for Python 3.8 installed in the same
# write-up): `sudo tegrastats` pasted in a public Orin setup guide (README, 2023-04-24), found by code search;
# the index did not name the repository. Two GPU clusters (GR3D_FREQ, GR3D2_FREQ), no VDD_IN rail, two NC rails.
ORIN_AGX_JP5 = ("04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) CPU [0%@729,0%@729,"
                "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 "
                "GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C Tboard@32C SOC2@39.343C Tdiode@33.25C "
                "SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C CV2@-256C VDD_GPU_SOC 2399mW/2399mW "
                "VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
# Orin NX 8 GB (7337 MB, 6 cores, two off): a comment in a public web dashboard's tegrastats parser
# (01-24-2024), found by code search; repository not named by the index. GR3D2_FREQ, VDD_IN.
ORIN_NX = ("01-24-2024 09:17:09 RAM 3503/7337MB (lfb 7x1MB) SWAP 430/3668MB (cached 1MB) "
           "CPU [11%@729,13%@729,9%@729,18%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@305 GR3D2_FREQ 0%@0 "
           "VIC_FREQ 115 APE 174 CV0@42.718C CPU@44.093C SOC2@42.625C SOC0@43.281C CV1@42.25C GPU@41.343C "
           "tj@46.968C SOC1@46.968C CV2@42.875C VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 449mW/449mW VDD_SOC 1431mW/1431mW")
# Orin, JetPack 6: "one GPU entry with a frequency per cluster", from a public ROS tool's tests (gpu_tools/load),
# found by code search. Same form on JetPack 7.2 Orin: rbonghi/jetson_stats PR #894 (`GR3D_FREQ 0%@[1300,1300]`).
ORIN_JP6 = ("RAM 9873/30697MB (lfb 76x4MB) CPU [1%@729,0%@729,0%@729,0%@729,0%@1728,0%@1728,100%@1728,0%@1728] "
            "EMC_FREQ 6%@2133 GR3D_FREQ 0%@[0,0]")
# Orin rails on JetPack 7 (current/average/max mW), as given in the project's Jetson notes (ceo_notes.md).
ORIN_JP7_RAILS = ("RAM 9000/62000MB (lfb 8x4MB) SWAP 0/31000MB (cached 0MB) CPU [1%@2601,2%@2601] GR3D_FREQ 12%@[1300,1300] "
                  "VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 800mW/700mW/900mW VIN_SYS_5V0 3000mW/2900mW/3100mW")
# Jetson Thor (128 GB, three GPCs), loaded and idle: lines from a public tegrastats-telemetry test suite
# (r39 lines), found by code search; the Thor array form `GR3D_FREQ @[..]` without % is also the one
# rbonghi/jetson_stats PR #894 lists for Thor. Idle: shared CPU frequency `CPU [0%,5%,off]@2601`.
THOR_LOADED = ("08-08-2026 21:00:39 RAM 8353/125749MB (lfb 31x4MB) CPU [90%@2601,75%@2601,off,7%@2601] "
               "EMC_FREQ 34%@4266 GR3D_FREQ 87%@[1574,1574,1574] NVENC0_FREQ @1691 VIC off cpu@58.25C/61.75C "
               "tj@66.625C/66.625C gpu@56.937C/66.625C soc012@55.375C/58.781C soc345@55.812C/60.031C "
               "VDD_GPU 37939mW/8660mW/37939mW VDD_CPU_SOC_MSS 30059mW/12281mW/30059mW "
               "VIN_SYS_5V0 15486mW/7424mW/15486mW VIN 124486mW/36487mW/124486mW FUTURE_TOKEN value")
THOR_IDLE = ("08-08-2026 20:58:23 RAM 3429/125749MB (lfb 120x4MB) CPU [0%,5%,off]@2601 EMC_FREQ @4266 "
             "GR3D_FREQ @[1574,1574,1574] cpu@49.75C/49.75C tj@51.218C/51.218C gpu@51.218C/51.218C "
             "VDD_GPU 6330mW/6330mW/6330mW VIN 28906mW/14453mW/28906mW")


def test_xavier_jetpack4_unitless_short_rails():
    s = parse_line(XAVIER_JP4)
    assert (s["ram_used_mb"], s["ram_total_mb"], s["swap_used_mb"]) == (14700, 15692, 898)
    assert s["gpu"] == {"GR3D_FREQ": {"load_pct": 0, "freq_mhz": []}} and s["gpu_freq_mhz"] is None
    assert s["rails"] == {"GPU": {"current_mw": 463, "avg_mw": 463}, "CPU": {"current_mw": 618, "avg_mw": 618},
                          "SOC": {"current_mw": 2936, "avg_mw": 2936}, "CV": {"current_mw": 0, "avg_mw": 0},
                          "VDDRQ": {"current_mw": 309, "avg_mw": 309}, "SYS5V": {"current_mw": 3306, "avg_mw": 3306}}
    assert len(s["cpu"]) == 8 and s["cpu"][0] == {"load_pct": 0, "freq_mhz": 1190}


def test_tx2_unitless_vdd_rails_and_single_frequency():
    s = parse_line(TX2)
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (36, 140)
    assert s["rails"]["VDD_IN"] == {"current_mw": 1776, "avg_mw": 1805} and len(s["rails"]) == 6
    assert input_power({"VDD_IN": [1776, 1800]})["avg_mw"] == 1788.0


def test_orin_agx_jetpack5_two_clusters_no_input_rail():
    s = parse_line(ORIN_AGX_JP5)
    assert (s["ram_used_mb"], s["ram_total_mb"]) == (1282, 62795)
    assert s["gpu"] == {"GR3D_FREQ": {"load_pct": 0, "freq_mhz": [0]}, "GR3D2_FREQ": {"load_pct": 0, "freq_mhz": [0]}}
    assert set(s["rails"]) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}  # NC channels dropped
    assert "RAM" not in s["rails"] and "SWAP" not in s["rails"]
    power = summarize([s])["input_power"]
    assert power["rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"] and power["avg_mw"] == 2399 + 400 + 4032


def test_orin_nx_second_cluster_and_vdd_in():
    s = parse_line(ORIN_NX)
    assert s["gpu"]["GR3D_FREQ"] == {"load_pct": 0, "freq_mhz": [305]}
    assert s["gpu"]["GR3D2_FREQ"] == {"load_pct": 0, "freq_mhz": [0]}
    assert s["gpu_freq_mhz"] == 305  # the cluster that is clocked, not the idle one at 0
    assert s["cpu"][4] is None and s["cpu"][5] is None and s["cpu"][3] == {"load_pct": 18, "freq_mhz": 729}
    assert summarize([s])["input_power"] == {"rails": ["VDD_IN"], "avg_mw": 4915.0,
                                             "method": "mean of VDD_IN current over the window"}


def test_orin_jetpack6_and_7_per_gpc_frequency_arrays():
    s = parse_line(ORIN_JP6)
    assert s["gpu"] == {"GR3D_FREQ": {"load_pct": 0, "freq_mhz": [0, 0]}} and s["rails"] == {}
    assert s["cpu"][6] == {"load_pct": 100, "freq_mhz": 1728}
    s = parse_line(ORIN_JP7_RAILS)
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (12, 1300)
    assert s["rails"]["VDD_CPU_CV"] == {"current_mw": 800, "avg_mw": 700, "max_mw": 900}


def test_thor_frequency_only_gpu_and_vin():
    s = parse_line(THOR_LOADED)
    assert s["gpu"] == {"GR3D_FREQ": {"load_pct": 87, "freq_mhz": [1574, 1574, 1574]}}
    assert s["rails"]["VIN"] == {"current_mw": 124486, "avg_mw": 36487, "max_mw": 124486}
    assert "FUTURE_TOKEN" not in s["rails"] and s["cpu"][2] is None
    idle = parse_line(THOR_IDLE)
    assert idle["gpu_load_pct"] is None and idle["gpu_freq_mhz"] == 1574  # no % on Thor: load unknown, not 0
    assert idle["cpu"] == [{"load_pct": 0, "freq_mhz": 2601}, {"load_pct": 5, "freq_mhz": 2601}, None]
    summ = summarize([idle, s])
    assert summ["input_power"]["rails"] == ["VIN"] and summ["input_power"]["avg_mw"] == (28906 + 124486) / 2
    assert summ["ram_delta_mb"] == 8353 - 3429 and summ["gpu_load_mean_pct"] == 87.0


def test_garbage_summary_and_energy():
    assert parse_line("") is None and parse_line("hello world") is None and parse_line("RAM 5/10GB") is None
    assert summarize([]) is None
    e = energy_per_inference({"rails": ["VDD_IN"], "avg_mw": 5000.0, "method": "m"}, latency_mean_ms=20.0, batch=4)
    assert e["mj_per_inference"] == 25.0  # 5 W x 20 ms / 4 images = 25 mJ per image
    assert energy_per_inference(None, 20.0, 1) is None
