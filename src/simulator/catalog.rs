//! The fixed vocabulary the seeded marketplace draws from: configurations, datacenters,
//! hardware and default images.

/// A basic configuration; storage is the base disk every VM of it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSpec {
    pub slug: &'static str,
    pub cores: i64,
    pub ram_gib: i64,
    pub storage_gib: i64,
}

/// Ordered smallest first: "no basicConfiguration" means the first that has candidates.
pub const CONFIGURATIONS: [ConfigSpec; 4] = [
    ConfigSpec {
        slug: "cpu-2-ram-4gb-storage-25gb",
        cores: 2,
        ram_gib: 4,
        storage_gib: 25,
    },
    ConfigSpec {
        slug: "cpu-4-ram-8gb-storage-25gb",
        cores: 4,
        ram_gib: 8,
        storage_gib: 25,
    },
    ConfigSpec {
        slug: "cpu-8-ram-16gb-storage-25gb",
        cores: 8,
        ram_gib: 16,
        storage_gib: 25,
    },
    ConfigSpec {
        slug: "cpu-16-ram-32gb-storage-25gb",
        cores: 16,
        ram_gib: 32,
        storage_gib: 25,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatacenterSpec {
    pub country: &'static str,
    pub city: &'static str,
    pub index: u32,
    pub tier: u8,
    pub certifications: &'static [&'static str],
}

pub const DATACENTERS: [DatacenterSpec; 8] = [
    DatacenterSpec {
        country: "DE",
        city: "FRA",
        index: 1,
        tier: 3,
        certifications: &["ISO/IEC 27001:2022", "PCI DSS"],
    },
    DatacenterSpec {
        country: "DE",
        city: "BER",
        index: 1,
        tier: 3,
        certifications: &["ISO/IEC 27001:2022"],
    },
    DatacenterSpec {
        country: "FR",
        city: "PAR",
        index: 1,
        tier: 3,
        certifications: &["ISO/IEC 27001:2022", "SOC2"],
    },
    DatacenterSpec {
        country: "PL",
        city: "POZ",
        index: 1,
        tier: 4,
        certifications: &["ISO 27001:2022", "SOC2"],
    },
    DatacenterSpec {
        country: "BE",
        city: "BRU",
        index: 1,
        tier: 3,
        certifications: &["ISO/IEC 27001:2022"],
    },
    DatacenterSpec {
        country: "US",
        city: "NYC",
        index: 1,
        tier: 4,
        certifications: &["SOC2", "PCI DSS"],
    },
    DatacenterSpec {
        country: "US",
        city: "LAX",
        index: 1,
        tier: 3,
        certifications: &["SOC2"],
    },
    DatacenterSpec {
        country: "GB",
        city: "LON",
        index: 1,
        tier: 4,
        certifications: &["ISO/IEC 27001:2022", "SOC2", "PCI DSS"],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSpec {
    pub manufacturer: &'static str,
    pub brand: &'static str,
    pub architecture: &'static str,
    pub generation: &'static str,
    pub model: &'static str,
}

pub const CPUS: [CpuSpec; 3] = [
    CpuSpec {
        manufacturer: "AMD",
        brand: "EPYC",
        architecture: "Zen",
        generation: "4",
        model: "9354P",
    },
    CpuSpec {
        manufacturer: "AMD",
        brand: "EPYC",
        architecture: "Zen",
        generation: "3",
        model: "7763",
    },
    CpuSpec {
        manufacturer: "Intel (R)",
        brand: "Xeon",
        architecture: "ICE LAKE",
        generation: "3",
        model: "8352Y",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamSpec {
    pub kind: &'static str,
    pub generation: &'static str,
    pub manufacturer: &'static str,
    pub speed: u32,
}

pub const RAMS: [RamSpec; 2] = [
    RamSpec {
        kind: "DDR",
        generation: "4",
        manufacturer: "Samsung",
        speed: 3200,
    },
    RamSpec {
        kind: "DDR",
        generation: "5",
        manufacturer: "Micron",
        speed: 4800,
    },
];

pub const STORAGE_TYPES: [&str; 3] = ["NVMe", "SSD", "HDD"];

/// The supported `osImage` suffixes.
pub const IMAGE_SUFFIXES: [&str; 7] = [
    ".qcow2", ".img", ".raw", ".raw.xz", ".raw.gz", ".img.xz", ".img.gz",
];

pub struct ImageSpec {
    pub id: &'static str,
    pub name: &'static str,
    pub distribution: &'static str,
    pub slug: &'static str,
    pub download_url: &'static str,
    pub username: &'static str,
}

pub const DEFAULT_IMAGES: [ImageSpec; 3] = [
    ImageSpec {
        id: "5f53e9421ce50211670eae679f02e8d2",
        name: "22.04 (LTS) x64",
        distribution: "Ubuntu",
        slug: "ubuntu-22-04-x64",
        download_url: "https://cloud-images.ubuntu.com/releases/22.04/release/ubuntu-22.04-server-cloudimg-amd64.img",
        username: "ubuntu",
    },
    ImageSpec {
        id: "8a79023c39c200661fccd268a29a0d34",
        name: "24.04 (LTS) x64",
        distribution: "Ubuntu",
        slug: "ubuntu-24-04-x64",
        download_url: "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img",
        username: "ubuntu",
    },
    ImageSpec {
        id: "7301ef56e64dc3cd6089065c3146e80a",
        name: "12 x64",
        distribution: "Debian",
        slug: "debian-12-x64",
        download_url: "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        username: "debian",
    },
];

/// When the default images were published: fixed, so the list is the same on every run.
pub const IMAGES_PUBLISHED_MICROS: i64 = 1_756_728_000_482_913;
