"""Citations shared by registries: a :class:`Reference` carries authors, journal, year and DOI.

Registries hold ``Reference`` objects, so every number can be traced from Python
(``qdmed.optics.models()[...].reference``) and from the CLI (``--cite``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Reference:
    """A literature source.

    Attributes
    ----------
    key : str
        Short identifier, e.g. ``"yu2003"``.
    citation : str
        Authors, title, journal, year, volume and pages.
    doi : str or None
        DOI without the resolver prefix, or None where the source has none.
    """

    key: str
    citation: str
    doi: str | None = None

    def __str__(self) -> str:
        return f"{self.citation}" + (f" doi:{self.doi}" if self.doi else "")

    def to_dict(self) -> dict:
        return asdict(self)


YU2003 = Reference(
    "yu2003",
    "Yu, W. W.; Qu, L.; Guo, W.; Peng, X. Experimental determination of the extinction "
    "coefficient of CdTe, CdSe, and CdS nanocrystals. Chem. Mater. 2003, 15, 2854-2860",
    "10.1021/cm034081k",
)
JASIENIAK2009 = Reference(
    "jasieniak2009",
    "Jasieniak, J.; Smith, L.; van Embden, J.; Mulvaney, P.; Califano, M. Re-examination of "
    "the size-dependent absorption properties of CdSe quantum dots. J. Phys. Chem. C 2009, "
    "113, 19468-19474",
    "10.1021/jp906827m",
)
MOREELS2009 = Reference(
    "moreels2009",
    "Moreels, I. et al. Size-dependent optical properties of colloidal PbS quantum dots. "
    "ACS Nano 2009, 3, 3023-3030",
    "10.1021/nn900863a",
)
MOREELS2007 = Reference(
    "moreels2007",
    "Moreels, I.; Lambert, K.; De Muynck, D.; Vanhaecke, F.; Poelman, D.; Martins, J. C.; "
    "Allan, G.; Hens, Z. Composition and size-dependent extinction coefficient of colloidal "
    "PbSe quantum dots. Chem. Mater. 2007, 19, 6101-6106",
    "10.1021/cm071410q",
)
ALMEIDA2023 = Reference(
    "almeida2023",
    "Almeida, G.; van der Poll, L.; Evers, W. H.; Szoboszlai, E.; Vonk, S. J. W.; Rabouw, F. T.; "
    "Houtepen, A. J. Size-dependent optical properties of InP colloidal quantum dots. "
    "Nano Lett. 2023, 23, 8697-8703",
    "10.1021/acs.nanolett.3c02630",
)
YU_NOZIK2005 = Reference(
    "yu_nozik2005",
    "Yu, P.; Beard, M. C.; Ellingson, R. J.; Ferrere, S.; Curtis, C.; Drexler, J.; Luiszer, F.; "
    "Nozik, A. J. Absorption cross-section and related optical properties of colloidal InAs "
    "quantum dots. J. Phys. Chem. B 2005, 109, 7084-7087",
    "10.1021/jp046127i",
)
PENG1998 = Reference(
    "peng1998",
    "Peng, X.; Wickham, J.; Alivisatos, A. P. Kinetics of II-VI and III-V colloidal "
    "semiconductor nanocrystal growth: \"focusing\" of size distributions. J. Am. Chem. Soc. "
    "1998, 120, 5343-5344 (Supporting Information: InAs absorption peak / PL peak / TEM size "
    "calibration table)",
    "10.1021/ja9805425",
)
BRUS1984 = Reference(
    "brus1984",
    "Brus, L. E. Electron-electron and electron-hole interactions in small semiconductor "
    "crystallites: the size dependence of the lowest excited electronic state. "
    "J. Chem. Phys. 1984, 80, 4403-4409",
    "10.1063/1.447218",
)
KAYANUMA1988 = Reference(
    "kayanuma1988",
    "Kayanuma, Y. Quantum-size effects of interacting electrons and holes in semiconductor "
    "microcrystals with spherical shape. Phys. Rev. B 1988, 38, 9797-9805",
    "10.1103/PhysRevB.38.9797",
)
HAUS1993 = Reference(
    "haus1993",
    "Haus, J. W.; Zhou, H. S.; Honma, I.; Komiyama, H. Quantum confinement in semiconductor "
    "heterostructure nanometer-size particles. Phys. Rev. B 1993, 47, 1359-1365",
    "10.1103/PhysRevB.47.1359",
)
DENNIS2012 = Reference(
    "dennis2012",
    "Dennis, A. M.; Mangum, B. D.; Piryatinski, A.; Park, Y.-S.; Hannah, D. C.; Casson, J. L.; "
    "Williams, D. J.; Schaller, R. D.; Htoon, H.; Hollingsworth, J. A. Suppressed blinking and "
    "Auger recombination in near-infrared type-II InP/CdS nanocrystal quantum dots. "
    "Nano Lett. 2012, 12, 5545-5551",
    "10.1021/nl302453x",
)
GAIGALAS2014 = Reference(
    "gaigalas2014",
    "Gaigalas, A. K.; DeRose, P.; Wang, L.; Zhang, Y.-Z. Optical properties of CdSe/ZnS "
    "nanocrystals. J. Res. Natl. Inst. Stand. Technol. 2014, 119, 610-628",
    "10.6028/jres.119.026",
)
MOONEY2013 = Reference(
    "mooney2013",
    "Mooney, J.; Kambhampati, P. Get the basics right: Jacobian conversion of wavelength and "
    "energy scales for quantitative analysis of emission spectra. J. Phys. Chem. Lett. 2013, "
    "4, 3316-3318",
    "10.1021/jz401508t",
)
CHOI2007 = Reference(
    "choi2007",
    "Choi, H. S.; Liu, W.; Misra, P.; Tanaka, E.; Zimmer, J. P.; Itty Ipe, B.; Bawendi, M. G.; "
    "Frangioni, J. V. Renal clearance of quantum dots. Nat. Biotechnol. 2007, 25, 1165-1170",
    "10.1038/nbt1340",
)
CHOI2010 = Reference(
    "choi2010",
    "Choi, H. S.; Liu, W.; Liu, F.; Nasr, K.; Misra, P.; Bawendi, M. G.; Frangioni, J. V. "
    "Design considerations for tumour-targeted nanoparticles. Nat. Nanotechnol. 2010, 5, 42-47",
    "10.1038/nnano.2009.314",
)
GAO2010 = Reference(
    "gao2010",
    "Gao, J.; Chen, K.; Xie, R.; Xie, J.; Yan, Y.; Cheng, Z.; Peng, X.; Chen, X. In vivo tumor-"
    "targeted fluorescence imaging using near-infrared non-cadmium quantum dots. "
    "Bioconjug. Chem. 2010, 21, 604-609 (QD800-RGD)",
    "10.1021/bc900323v",
)
DEGENNES1980 = Reference(
    "degennes1980",
    "de Gennes, P. G. Conformations of polymers attached to an interface. Macromolecules "
    "1980, 13, 1069-1075",
    "10.1021/ma60077a009",
)
FLORY1953 = Reference(
    "flory1953",
    "Flory, P. J. Principles of Polymer Chemistry. Cornell University Press, 1953 "
    "(R_F = a N^(3/5) good-solvent scaling)",
    None,
)
IAPWS2008 = Reference(
    "iapws2008",
    "Huber, M. L.; Perkins, R. A.; Laesecke, A.; Friend, D. G.; Sengers, J. V.; Assael, M. J.; "
    "Metaxa, I. N.; Vogel, E.; Mares, R.; Miyagawa, K. New international formulation for the "
    "viscosity of H2O. J. Phys. Chem. Ref. Data 2009, 38, 101-125 (IAPWS 2008)",
    "10.1063/1.3088050",
)
EINSTEIN1905 = Reference(
    "einstein1905",
    "Einstein, A. Ueber die von der molekularkinetischen Theorie der Waerme geforderte "
    "Bewegung von in ruhenden Fluessigkeiten suspendierten Teilchen. Ann. Phys. 1905, 322, "
    "549-560 (Stokes-Einstein relation)",
    "10.1002/andp.19053220806",
)
