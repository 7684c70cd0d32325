use super::*;

#[test]
fn prot_names_cover_none_known_and_unknown_bits() {
    assert_eq!(prot_names(0), "PROT_NONE");
    assert_eq!(prot_names(0x3), "PROT_READ|PROT_WRITE");
    assert_eq!(prot_names(0x6), "PROT_WRITE|PROT_EXEC");
    assert_eq!(
        prot_names(0x7 | 0x40),
        "PROT_READ|PROT_WRITE|PROT_EXEC|0x40"
    );
}

#[test]
fn flags_names_render_type_bits_and_huge_sizes() {
    assert_eq!(flags_names(0x22), "MAP_PRIVATE|MAP_ANONYMOUS");
    assert_eq!(flags_names(0x01), "MAP_SHARED");
    assert_eq!(flags_names(0x03), "MAP_SHARED_VALIDATE");
    assert_eq!(flags_names(0x12), "MAP_PRIVATE|MAP_FIXED");
    assert_eq!(
        flags_names(0x4_0022),
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB"
    );
    assert_eq!(
        flags_names(0x4_0022 | (21 << 26)),
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_2MB"
    );
    assert_eq!(
        flags_names(0x4_0022 | (30 << 26)),
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_1GB"
    );
    assert_eq!(
        flags_names(0x22 | 0x400_0000),
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_UNINITIALIZED"
    );
    assert_eq!(flags_names(0), "0");
    assert_eq!(flags_names(0x0c), "0xc");
    assert_eq!(flags_names(0x2 | 0x8000_0000), "MAP_PRIVATE|0x80000000");
}

#[test]
fn names_parse_back_to_their_bits() {
    for (name, bit) in PROT_NAMES {
        assert_eq!(parse_prot(name), Some(*bit), "{name}");
    }
    for (name, bit) in MAP_FLAG_NAMES {
        assert_eq!(parse_flag(name), Some(*bit), "{name}");
    }
    assert_eq!(parse_prot("PROT_NONE"), Some(0));
    assert_eq!(parse_prot("PROT_WRIT"), None);
    assert_eq!(parse_flag("MAP_SHARED"), Some(1));
}

#[test]
fn errno_names_of_negative_returns() {
    assert_eq!(errno_name(-9), Some("EBADF"));
    assert_eq!(errno_name(-22), Some("EINVAL"));
    assert_eq!(errno_name(-12), Some("ENOMEM"));
    assert_eq!(errno_name(0x7f00_0000_0000), None);
    assert_eq!(errno_name(-4095), None);
}
